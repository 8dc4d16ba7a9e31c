"""``RoundTrip``: one peer's smoothed round trip and its retransmission timeout.

RFC 6298, section 2: the first sample R sets SRTT = R and RTTVAR = R/2;
each later one RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, SRTT = 7/8 SRTT + 1/8 R;
RTO = SRTT + 4 RTTVAR; each timeout doubles it until the next sample
(5.5; without it, a peer whose path slowed past its RTO timed out every
request and gave no sample to adapt to). The floor is ours, not the RFC's 1 s: a lookup that
waited a second on every dead contact is what made a network slow for
minutes after a crash (``MIN_RTO``). Samples come only from requests sent
once (Karn's rule, ``requests``). Seconds throughout; no clock of its own.
"""

from __future__ import annotations

MAX_BACKOFF = 64
"""Doublings at most (``timeout`` bounds the wait anyway)."""
MIN_RTO = 0.2
"""Seconds a request to a known peer waits at least. Below the round trips
of an internet path's worst tenth and above a loaded host's pauses: the
replies of 60 nodes in one Python process took up to ~50 ms under load."""


class RoundTrip:
    """The estimate of one peer (not thread-safe: a race between listeners
    only blurs an average)."""

    __slots__ = ("backoff", "srtt", "variation")

    def __init__(self, sample: float) -> None:
        self.srtt = sample
        """Seconds, smoothed."""
        self.variation = sample / 2
        """RTTVAR: the mean deviation of the samples, seconds."""
        self.backoff = 1
        """What the RTO is multiplied by: doubled by each timeout."""

    def add(self, sample: float) -> None:
        self.variation += (abs(self.srtt - sample) - self.variation) / 4
        self.srtt += (sample - self.srtt) / 8
        self.backoff = 1

    def timed_out(self) -> None:
        self.backoff = min(2 * self.backoff, MAX_BACKOFF)

    def rto(self) -> float:
        """Seconds to wait for this peer's answer before taking it as lost."""
        return max(MIN_RTO, self.srtt + 4 * self.variation) * self.backoff
