"""The Lua script that stores one intake call's events (``bridge/intake.py`` runs it), and
the keys it writes besides RQ's.

KEYS: the queue, ``rq:queues``, the metrics hash, the last-event hash, the recent
deliveries and this hour's activity (``bridge/activity.py``), then per event its dedupe
key, the key of its new job and its buyer's event index (``""`` when the event names no
email). ARGV[1..11]: the dedupe TTL, the job key prefix, the dead statuses
(comma-separated), four counter fields (``""`` for none: events queued, events duplicate,
webhook queued, webhook duplicate), the provider of a webhook delivery (``""``: not one,
nothing recorded as its last event or its activity), the time received (Unix seconds, the
index's score), the same in whole seconds (the last-event value) and the activity's TTL;
from ARGV[12], per event: its job
id, the number of fields of its job hash, then those fields and values. The job key a
dedupe key names is read without being declared in KEYS: fine on one Redis (RQ's keys
are not cluster-safe either). Returns one integer per event, 1 queued and 0 duplicate,
or {-1} when a dedupe key names a dead job: then nothing was written.
"""

from __future__ import annotations

# A buyer's events, newest last: sorted set, score the time received, member the job id.
MEMBER_EVENTS_PREFIX = "bridge:member-events:"
# How many of a buyer's events the index keeps (the newest).
MEMBER_EVENTS_MAX = 200
# The last event received per provider: hash, field the provider, value "<job id>|<unix s>".
LAST_EVENT_KEY = "bridge:last-event"
# What a dedupe key holds for an event a reconcile applied (no job: nothing can fail).
APPLIED_BY_RECONCILE = "applied-by-reconcile"
# The script's ARGV before the events' own.
FIXED_ARGS = 11
# The latest deliveries' jobs, for the operator's page: sorted set, score the time received.
RECENT_EVENTS_KEY = "bridge:recent-events"
RECENT_EVENTS_MAX = 1000


def member_events_key(email: str) -> str:
    """The event index of one buyer (the email lowercased, as events carry it)."""
    return MEMBER_EVENTS_PREFIX + email.strip().lower()


STORE_SCRIPT = """
local queue, queues, counters, last_event, recent = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local activity, activity_ttl = KEYS[6], ARGV[11]
local ttl, job_prefix = ARGV[1], ARGV[2]
local provider, received, received_s = ARGV[8], ARGV[9], ARGV[10]
local keep = KEEP
local dead = {}
for status in string.gmatch(ARGV[3], '[^,]+') do dead[status] = true end
local events = (#KEYS - 6) / 3

for i = 1, events do
  local previous = redis.call('GET', KEYS[4 + 3 * i])
  if previous then
    local status = redis.call('HGET', job_prefix .. previous, 'status')
    if status and dead[status] then return {-1} end
  end
end

local outcomes, queued, last_job = {}, 0, nil
local at = FIRST
for i = 1, events do
  local dedupe, job, index = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local job_id, last = ARGV[at], at + 1 + 2 * tonumber(ARGV[at + 1])
  if redis.call('EXISTS', dedupe) == 1 then
    outcomes[i] = 0
    last_job = redis.call('GET', dedupe)
  else
    -- The dedupe key last: a write refused half-way leaves a job without its key (a
    -- redelivery makes a second, idempotent job), never a key naming no job (lost).
    redis.call('SADD', queues, queue)
    redis.call('HSET', job, unpack(ARGV, at + 2, last))
    redis.call('RPUSH', queue, job_id)
    redis.call('SET', dedupe, job_id, 'EX', ttl)
    outcomes[i] = 1
    queued = queued + 1
    last_job = job_id
    redis.pcall('ZADD', recent, received, job_id)
    if index ~= '' then
      redis.pcall('ZADD', index, received, job_id)
      redis.pcall('ZREMRANGEBYRANK', index, 0, -keep - 1)
      redis.pcall('EXPIRE', index, ttl)
    end
  end
  at = last + 1
end

-- pcall: a counter or an index entry that cannot be written loses itself, never the events.
local function count(name, amount)
  if name ~= '' and amount > 0 then redis.pcall('HINCRBY', counters, name, amount) end
end
count(ARGV[4], queued)
count(ARGV[5], events - queued)
if queued > 0 then count(ARGV[6], 1) else count(ARGV[7], 1) end
if queued > 0 then redis.pcall('ZREMRANGEBYRANK', recent, 0, -RECENT - 1) end
-- The chart's duplicates (the worker counts where queued ones end).
if provider ~= '' and events > queued then
  redis.pcall('HINCRBY', activity, provider .. ':duplicate', events - queued)
  redis.pcall('EXPIRE', activity, activity_ttl)
end
-- A duplicate of what a reconcile applied names no job: it is no last event to follow.
if provider ~= '' and last_job and last_job ~= 'APPLIED' then
  redis.pcall('HSET', last_event, provider, last_job .. '|' .. received_s)
end
return outcomes
""".replace("KEEP", str(MEMBER_EVENTS_MAX)).replace("FIRST", str(FIXED_ARGS + 1))
STORE_SCRIPT = STORE_SCRIPT.replace("RECENT", str(RECENT_EVENTS_MAX)).replace(
    "'APPLIED'", repr(APPLIED_BY_RECONCILE)
)
