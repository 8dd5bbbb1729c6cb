"""The daemon freezes its start-up objects out of the collector's way; a reload must not leave
what it replaced frozen for ever."""

from __future__ import annotations

import gc
import weakref

from edgegw.service.app import _refreeze


class _Holder:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_a_reload_lets_the_collector_free_what_was_frozen_and_replaced() -> None:
    replaced = _Holder()
    gone = weakref.ref(replaced)
    gc.collect()
    gc.freeze()
    try:
        del replaced
        gc.collect()
        assert gone() is not None  # frozen: the collector does not see it
        _refreeze()
        assert gone() is None
        assert gc.get_freeze_count() > 0  # what lives on is frozen again
    finally:
        gc.unfreeze()


def test_without_a_freeze_nothing_is_frozen_by_a_reload() -> None:
    assert gc.get_freeze_count() == 0
    _refreeze()
    assert gc.get_freeze_count() == 0
