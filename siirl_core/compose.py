"""Compose the Hydra config from conf/ with command-line overrides, then type-check
and validate it, turning Hydra's errors into ones that name the key."""
from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from siirl_core.config import ConfigError, SiirlConfig, build_config, explain_omegaconf_error
from siirl_core.config_checks import validate

CONF_DIR = Path(os.environ.get("SIIRL_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))
ConfigStore.instance().store(name="siirl_schema", node=SiirlConfig)


def _explain(err: Exception) -> str:
    cause = err.__cause__ or err
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return explain_omegaconf_error(cause)
    # Hydra's own messages (unknown group option, bad override syntax) list the options;
    # the config search path after them is noise.
    text = str(err).split("Config search path")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(err)


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> SiirlConfig:
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            composed = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None
    finally:
        GlobalHydra.instance().clear()
    # A plain container: merging it into the schema rejects keys the schema lacks.
    return validate(build_config(OmegaConf.to_container(composed, resolve=True)))
