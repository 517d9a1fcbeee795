"""Entry point: compose the Hydra config, check it against this machine, run the task, write outputs.

    python run.py                                   # embedded tiny model, random weights
    python run.py dit_quant=fp8-sgl hardware=h100   # check + run a scheme
    python run.py -m dit_quant=fp8-torch,int8-torch # sweep, with a summary in the sweep dir
    python run.py lightx2v_config=wan_i2v.json      # a LightX2V JSON config; later overrides still win
"""

import sys

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
    from lightx2v_quant.lightx2v_compat import LightX2VConfigError, expand

    try:
        return expand(argv)
    except LightX2VConfigError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv[1:] = _expand_lightx2v_config(sys.argv[1:])
    main()
