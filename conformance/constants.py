"""Every number the suite relies on, in one place.

Timeouts are generous enough for a network backend on a loaded CI machine and short
enough that a broken layer fails in seconds rather than hanging the run.
"""

from __future__ import annotations

#: Longest any single layer call may take before the test fails as hung.
OP_TIMEOUT = 5.0
#: How long a ``receive`` may take to return a message that is already on its way.
RECEIVE_TIMEOUT = 5.0
#: How long to listen before concluding that no message is coming.
QUIET_WAIT = 0.25
#: How long a cancelled layer call may take to finish; a call that swallows the
#: cancellation is reported instead of hanging the run.
CANCEL_GRACE = 2.0
#: Pause that lets a started ``receive`` reach its waiting point.
SETTLE = 0.1
#: Overall bound for the many-receiver and cancellation workloads.
WORKLOAD_TIMEOUT = 10.0

#: ``expiry`` used by the expiry checks, and how long to wait to be past it. Sub-second:
#: the contract's ``expiry`` is a number of seconds, not a whole number (a layer that
#: truncates 0.5 to 0 keeps nothing at all). A message sent after the wait must still be
#: received within ``EXPIRY``.
EXPIRY = 0.5
EXPIRY_WAIT = 0.8
#: ``group_expiry`` used by the membership checks: a whole second, since layers pass it to
#: Redis ``EXPIRE`` (integers only) or compare it with join times rounded down to whole
#: seconds (Channels' ``InMemoryChannelLayer``: ``int(joined) < int(now) - group_expiry``),
#: which keeps a membership for up to two seconds. So a membership may lapse any time from
#: ``GROUP_EXPIRY`` on and must have lapsed by ``GROUP_EXPIRY_WAIT``; the check probes with
#: ``group_send`` every ``GROUP_EXPIRY_POLL`` in between and stops at the first that
#: reaches nobody.
GROUP_EXPIRY = 1
GROUP_EXPIRY_WAIT = 2.3
GROUP_EXPIRY_POLL = 0.1
#: Re-adding at this interval twice keeps a membership alive under ``GROUP_EXPIRY``; the
#: group_send then comes after the first membership would have lapsed (on a layer that
#: does not round).
GROUP_REFRESH_STEP = 0.6

#: Contract defaults.
DEFAULT_CAPACITY = 100
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
MAX_NAME_LENGTH = 100
DEFAULT_NEW_CHANNEL_PREFIX = "specific"

#: A payload well over the default ``max_message_size`` once encoded.
OVERSIZED_PAYLOAD = 2 * 1024 * 1024
#: A payload comfortably under it, which must still round-trip.
LARGE_PAYLOAD = 256 * 1024

#: Capacity given to layers in the bulk workloads so that capacity never interferes.
BULK_CAPACITY = 10_000
CONCURRENT_RECEIVERS = 20
CONCURRENT_MESSAGES = 200
STORM_MESSAGES = 200
#: How long receivers keep being started and cancelled in the storm.
STORM_DURATION = 1.0
#: Bounds for the random lifetime of each receive in the storm, in seconds.
STORM_MIN_LIFETIME = 0.0005
STORM_MAX_LIFETIME = 0.02
RECEIVE_MANY_CALLERS = 10
RECEIVE_MANY_MESSAGES = 100
LOCAL_GROUP_MEMBERS = 100
#: How many ``new_channel`` names must all differ.
NEW_CHANNEL_SAMPLES = 50
#: How many times the event-loop checks start a fresh loop.
LOOP_ROUNDS = 3
#: Bad input must be rejected at once; a layer that waits instead fails this quickly.
ERROR_TIMEOUT = 2.0
#: How long a ``receive`` waiting while ``close()`` runs may take to end, with the message
#: sent after ``close()`` (the layer reopened) or with an error.
CLOSE_RECEIVE_TIMEOUT = 5.0
#: How many process-local channels of one instance get a message each while nobody
#: receives: well over the default capacity, which applies per channel, not per instance.
LOCAL_CHANNELS = 300
#: ``capacity`` for the check that one process-local channel still fills up.
SMALL_CAPACITY = 5
#: Threads calling one instance through ``async_to_sync`` at once, and the sends and
#: group sends each makes.
THREADS = 8
THREAD_ROUNDS = 5
