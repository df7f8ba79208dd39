"""The floor of the CLI-latency benchmark: a ``@hydra.main`` app that does nothing.

Its config is one typed dataclass in Hydra's ConfigStore (so a wrong key fails at compose time, as in the runner);
``--help``, ``--cfg job`` and ``lrr=1`` (an unknown key) cost only Python start-up, Hydra and OmegaConf. Anything the
runner's CLI costs beyond this app is the runner's own.

    python bench/reference/hydra_noop.py --cfg job
"""

from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore


@dataclass
class Config:
    lr: float = 2e-5
    max_steps: int = -1
    seed: int = 0


ConfigStore.instance().store(name="noop", node=Config)


@hydra.main(version_base="1.3", config_path=None, config_name="noop")
def main(cfg: Config) -> None:
    pass


if __name__ == "__main__":
    main()
