"""Entry point: compose the Hydra config, check it against this machine, run the task, write outputs.

python run.py                                   # embedded tiny model, random weights
python run.py dit_quant=fp8-sgl hardware=h100   # check + run a scheme
python run.py -m dit_quant=fp8-torch,int8-torch # sweep, with a summary in the sweep dir
python run.py lightx2v_config=wan_i2v.json      # a LightX2V JSON config; later overrides still win
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lightx2v_quant.config  # noqa: F401  (registers the config schema)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from lightx2v_quant.app import run_from_hydra

    return run_from_hydra(cfg)


def _expand_lightx2v_config(argv: list[str]) -> list[str]:
    """Translate `lightx2v_config=<file.json>` into overrides placed ahead of the user's (before Hydra
    parses the command line), so that any later override on the command line wins."""
    if not any("lightx2v_config" in a for a in argv):
        return argv
    from omegaconf import OmegaConf

    from lightx2v_quant.lightx2v_compat import LightX2VConfigError, expand, override_key

    try:
        expanded = expand(argv)
    except LightX2VConfigError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(2)
    translated = [override_key(a) for a in expanded if a not in argv]
    if translated:  # keep sweep folder names to what the user typed
        conf = OmegaConf.load(Path(__file__).parent / "conf" / "config.yaml")
        keys = [*conf.hydra.job.config.override_dirname.exclude_keys, *translated]
        first = next(
            i for i, a in enumerate(expanded) if a not in argv
        )  # overrides stay one block for argparse
        expanded.insert(first, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]")
    return expanded


if __name__ == "__main__":
    sys.argv[1:] = _expand_lightx2v_config(sys.argv[1:])
    main()
