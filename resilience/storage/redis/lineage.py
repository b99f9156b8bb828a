"""The versions a :class:`~resilience.storage.redis.RedisStore` reports for a circuit
that Redis may lose and create again.

Redis numbers a circuit's versions from 0 each time its hash is created (after a
restart without persistence, an eviction). Breakers compare versions and must never
see them go back: :class:`Lineage` keeps, per circuit, the epochs this store has
seen and maps Redis's versions to reported ones and back.
"""

from __future__ import annotations

from .wire import micros

__all__ = ["GAP", "Lineage"]

#: How far the reported versions of a circuit jump when Redis lost it.
GAP = 1 << 20

#: Earlier segments remembered per circuit.
_REMEMBERED = 8


class Lineage:
    """One circuit's epochs as this store has seen them, and how its versions are reported.

    Redis numbers a circuit's versions from 0 in each epoch (each time the hash is
    created). The store reports ``version + offset``, one offset per *segment* (an
    epoch, or a spell of the circuit being missing). When the circuit turns out to
    have been lost or replaced, a new segment starts with an offset past every
    version reported so far, so the versions a breaker sees never go back.

    Every segment stays addressable: :meth:`expect` maps any reported version back
    to its own segment's (version, epoch), so a breaker holding a version of an
    older segment always gets a definite answer from a compare-and-set (it loses,
    and adopts the circuit as it is) and can never be wedged.

    Ordering. An answer to a load or a transition (*current*) always lands in a
    segment: an epoch unknown here starts a new one. A pushed snapshot is a hint,
    possibly late: one from an epoch unknown here, born (by the server's clock)
    before the current segment's, is from a circuit lost before it, and is
    reported as version -1, which breakers ignore. Answers from an older epoch
    seen before keep that epoch's offset (older, so a breaker ignores them).
    """

    __slots__ = ("born", "epoch", "highest", "offset", "older")

    def __init__(self, epoch: str, born: int, version: int) -> None:
        self.epoch = epoch  # '' while the circuit is missing
        self.born = born  # the epoch's creation (or the segment's first answer), micros
        self.offset = 0
        self.highest = version
        self.older: list[tuple[int, str]] = []  # earlier segments (offset, epoch), oldest first

    def report(self, epoch: str, version: int, at: int, current: bool) -> int:
        """The version to report for Redis's ``version`` in ``epoch``, answered at server
        time ``at`` (``current``: to a load or a transition; else a pushed hint)."""
        if epoch != self.epoch:
            for offset, known in reversed(self.older):
                if epoch and known == epoch:
                    return version + offset  # a late answer from a lost epoch
            if epoch == "":
                if at <= self.born:
                    return version + self.offset  # an answer from before the circuit existed
                self._start("", at, version)  # the circuit vanished after it was created
            else:
                born = micros(epoch)
                if born <= self.born and not current:
                    return -1  # pushed late, by a circuit lost before this segment began
                if self.epoch == "" and born > self.born:
                    self.epoch, self.born = epoch, born  # created since seen missing: same segment
                else:
                    self._start(epoch, born, version)  # a new circuit replaced ours
        reported = version + self.offset
        if reported > self.highest:
            self.highest = reported
        return reported

    def _start(self, epoch: str, born: int, version: int) -> None:
        self.older.append((self.offset, self.epoch))
        del self.older[:-_REMEMBERED]
        self.offset = self.highest + max(1, GAP - version)
        self.epoch, self.born = epoch, born

    def expect(self, reported: int) -> tuple[int, str]:
        """A reported version as the scripts compare it: (version in Redis, epoch)."""
        if reported >= self.offset:
            return reported - self.offset, self.epoch
        for offset, epoch in reversed(self.older):
            if reported >= offset:
                return reported - offset, epoch
        return -1, self.epoch  # older than anything remembered: loses, whatever Redis holds
