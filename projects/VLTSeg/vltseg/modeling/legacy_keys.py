"""Conversion of pre-version-2 Mask2Former state dicts while they load (official Mask2Former's
``_load_from_state_dict`` hooks of the head and the transformer decoder)."""
import logging
from typing import Callable, Dict

__all__ = ["rename_legacy_keys"]

logger = logging.getLogger(__name__)


def rename_legacy_keys(
    state_dict: Dict[str, object], prefix: str, rename: Callable[[str], str], owner: str
) -> int:
    """
    Rename, in place, the keys of ``state_dict`` under ``prefix`` whose part after the prefix
    ``rename`` changes; warn once (naming ``owner``) when any key was converted.

    Args:
        state_dict (dict): the state dict being loaded (edited in place).
        prefix (str): the loading module's prefix, e.g. "sem_seg_head.".
        rename (callable): local key (after ``prefix``) -> local key in today's layout.
        owner (str): class name for the warning.

    Returns:
        int: number of converted keys.
    """
    converted = 0
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new_key = prefix + rename(key[len(prefix) :])
        if new_key != key:
            state_dict[new_key] = state_dict.pop(key)
            converted += 1
    if converted:
        logger.warning(
            "Weight format of %s has changed (checkpoint older than version 2): converted %d "
            "keys automatically; please upgrade the checkpoint.",
            owner,
            converted,
        )
    return converted
