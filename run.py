"""Entry point: compose the Hydra config, check it against this machine, run the task, write outputs.

    python run.py                                   # embedded tiny model, random weights
    python run.py dit_quant=fp8-sgl hardware=h100   # check + run a scheme
    python run.py -m dit_quant=fp8-torch,int8-torch # sweep, with a summary in the sweep dir
"""

import hydra
from omegaconf import DictConfig

import lightx2v_quant.config  # noqa: F401  (registers the config schema)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from lightx2v_quant.app import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    main()
