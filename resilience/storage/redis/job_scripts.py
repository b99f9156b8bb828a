"""The Lua scripts of :class:`~resilience.storage.redis.RedisStore`'s job queues.

Every call that changes a queue is one script, so it is atomic and one round trip.
The rules are those of :mod:`resilience._core.jobs`, applied job by job as the
memory store applies them.

Keys (``B`` is the queue's base, ``{prefix}:jobs:{<queue>}``, see
:mod:`~resilience.storage.redis.keys`; every key of a queue shares its hash tag)
-------------------------------------------------------------------------------
* ``B:j:<id>``: a hash per job, the fields of :class:`~resilience._core.jobs.Job`
  by name (a field that is ``None`` is absent). Times are ``%.17g`` text, which
  round-trips a double exactly.
* ``B:pending``, ``B:running``, ``B:done``, ``B:dead``: the ids of the jobs in
  each state, scored by id (listing, counts by ``ZCARD``).
* ``B:waiting``: every pending job, scored by ``next_attempt_at`` (due counts, lag).
* ``B:ready``: the jobs a claim may take, in claim order: due pending jobs and
  lapsed running ones. Every score is 0 and the member is fixed-width text that
  sorts as ``(priority, next_attempt_at, id)`` byte by byte: the priority as ten
  digits, the due time as the 16 hex digits of its IEEE bits made to sort (the
  sign bit flipped, or every bit for a negative time), the id as 16 digits. So
  the order is exact for every priority and every double, where a composite
  score would round. The same member names the job in ``B:waiting`` and
  ``B:leases``.
* ``B:leases``: every running job, scored by ``lease_until``.
* ``B:finished``: the done and dead jobs by ``finished_at`` (purge);
  ``B:dead_at``: the dead ones by ``finished_at``, then id (dead-letter listing).
* ``B:keys``: idempotency key to job id. ``B:b:<batch>``: a batch's ``total``,
  ``done`` and ``dead`` counts. ``B:meta``: the promotion watermarks below.

Promotion. ``B:ready`` holds every pending job due by the watermark ``w`` and
every running job whose lease lapsed by ``l`` (both in ``B:meta``). A claim first
moves the pending jobs that fell due since ``w`` and the leases that lapsed since
``l`` into it (dead-lettering exhausted lapsed jobs, as the core does), then takes
from its head. An enqueue moves the newly due ones too, so that jobs due at once
go straight into ``B:ready``. Each job enters ``B:ready`` once per wait: claims
cost O(log n) per job, not a scan. A job made pending or leased with a time at or
before a watermark (a clock that went back) goes into ``B:ready`` directly; a
claim skips, and keeps, entries that are not due yet.

Arguments: ``KEYS[1]`` is ``B``; every other key is derived from it, in the same
slot. ``ARGV[1]`` is the time, ``''`` for the server's ``TIME`` (a store given a
``job_clock`` sends its time). Optional strings arrive as ``''`` for ``None``,
else ``'='`` and the text.
"""

from __future__ import annotations

# Shared by every job script: the time, short names, the keys of the queue, helpers.
_PRELUDE = """
local base = KEYS[1]
local call = redis.call
local fmt = string.format
local now
if ARGV[1] == '' then
  local t = call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local K_JOB = base .. ':j:'
local K_BATCH = base .. ':b:'
local K_WAITING = base .. ':waiting'
local K_READY = base .. ':ready'
local K_LEASES = base .. ':leases'
local K_PENDING = base .. ':pending'
local K_RUNNING = base .. ':running'
local K_FINISHED = base .. ':finished'
local K_DEAD_AT = base .. ':dead_at'
local K_KEYS = base .. ':keys'
local K_META = base .. ':meta'

local function num(x) return fmt('%.17g', x) end
local function padded(sid) return fmt('%016d', tonumber(sid)) end
local function opt(v) if v == '' then return nil end return string.sub(v, 2) end

-- The claim-order member of a job: priority, due time, id, as text that sorts right.
local function member(priority, at, id)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(struct.pack('>d', at), 1, 8)
  if b1 < 128 then
    b1 = b1 + 128
  else
    b1, b2, b3, b4 = 255 - b1, 255 - b2, 255 - b3, 255 - b4
    b5, b6, b7, b8 = 255 - b5, 255 - b6, 255 - b7, 255 - b8
  end
  return fmt('%010d%02x%02x%02x%02x%02x%02x%02x%02x%016d',
    priority, b1, b2, b3, b4, b5, b6, b7, b8, id)
end
local function member_id(m) return fmt('%d', tonumber(string.sub(m, 27))) end

local function mark(field)
  local v = call('HGET', K_META, field)
  if v then return tonumber(v) end
  return -math.huge
end

local function zadd_ready(members)
  local i, n = 1, #members
  while i <= n do
    local args = {}
    local last = math.min(n, i + 499)
    for j = i, last do
      args[#args + 1] = 0
      args[#args + 1] = members[j]
    end
    call('ZADD', K_READY, unpack(args))
    i = last + 1
  end
end

-- Members of `key` scored in (since, now]: what fell due since the watermark.
local function since(key, watermark)
  local low = '-inf'
  if watermark > -math.huge then low = '(' .. num(watermark) end
  return call('ZRANGEBYSCORE', key, low, num(now))
end

-- Pending jobs due since watermark `w` into ready; answers the new watermark.
local function promote_waiting()
  local w = mark('w')
  if now <= w then return w end
  zadd_ready(since(K_WAITING, w))
  call('HSET', K_META, 'w', num(now))
  return now
end

local function make_pending(jk, sid, priority, at, w)
  local m = member(priority, at, tonumber(sid))
  call('HSET', jk, 'state', 'pending', 'next_attempt_at', num(at))
  call('ZADD', K_WAITING, num(at), m)
  if at <= w then call('ZADD', K_READY, 0, m) end
  call('ZADD', K_PENDING, sid, sid)
end

local function leave_running(jk, sid, m)
  call('ZREM', K_LEASES, m)
  call('ZREM', K_READY, m)
  call('ZREM', K_RUNNING, sid)
  call('HDEL', jk, 'lease_owner', 'lease_until')
end

local function finish(jk, sid, state, batch)
  local at = num(now)
  call('HSET', jk, 'state', state, 'finished_at', at)
  call('ZADD', base .. ':' .. state, sid, sid)
  call('ZADD', K_FINISHED, at, sid)
  if state == 'dead' then call('ZADD', K_DEAD_AT, at, padded(sid)) end
  if batch then call('HINCRBY', K_BATCH .. batch, state, 1) end
end

local function dead_letter(jk, sid, m, batch)
  leave_running(jk, sid, m)
  call('HDEL', jk, 'last_error_class')
  call('HSET', jk, 'last_error', 'lease lapsed', 'reason', 'attempts')
  finish(jk, sid, 'dead', batch)
end

-- The job `sid` if `worker` holds a live lease on it: its key, hash fields, member.
local function held(sid, worker)
  local jk = K_JOB .. sid
  local h = call('HMGET', jk, 'state', 'lease_owner', 'lease_until', 'priority',
    'next_attempt_at', 'batch', 'attempts', 'max_attempts')
  if h[1] ~= 'running' or h[2] ~= worker or not (now < tonumber(h[3])) then return nil end
  return jk, h, member(tonumber(h[4]), tonumber(h[5]), tonumber(sid))
end
"""

JOB_ENQUEUE = (
    _PRELUDE
    + """
-- KEYS[2], KEYS[3] (not on a cluster): the id counter, the set of queue names.
-- ARGV[2]: the first id to give ('' : from the counter), ARGV[3]: the queue's name,
-- then 8 per job: handler, payload, key, priority, delay, max_attempts, batch, trace.
-- Answers id, created (1 or 0) for each job.
local next_id
if ARGV[2] == '' then
  next_id = tonumber(call('GET', KEYS[2]) or '0')
else
  next_id = tonumber(ARGV[2]) - 1
end
local w = promote_waiting()
local stamp = num(now)
local out = {}
local made = 0
for i = 4, #ARGV, 8 do
  local key = opt(ARGV[i + 2])
  local holder = false
  if key then holder = call('HGET', K_KEYS, key) end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  else
    next_id = next_id + 1
    made = made + 1
    local sid = fmt('%d', next_id)
    local jk = K_JOB .. sid
    local at = now + tonumber(ARGV[i + 4])
    local fields = {'handler', ARGV[i], 'payload', ARGV[i + 1], 'priority', ARGV[i + 3],
      'state', 'pending', 'attempts', '0', 'next_attempt_at', num(at), 'created_at', stamp}
    if key then
      fields[#fields + 1] = 'key'
      fields[#fields + 1] = key
      call('HSET', K_KEYS, key, sid)
    end
    if ARGV[i + 5] ~= '' then
      fields[#fields + 1] = 'max_attempts'
      fields[#fields + 1] = ARGV[i + 5]
    end
    local batch = opt(ARGV[i + 6])
    if batch then
      fields[#fields + 1] = 'batch'
      fields[#fields + 1] = batch
      call('HINCRBY', K_BATCH .. batch, 'total', 1)
    end
    local trace = opt(ARGV[i + 7])
    if trace then
      fields[#fields + 1] = 'trace'
      fields[#fields + 1] = trace
    end
    call('HSET', jk, unpack(fields))
    local m = member(tonumber(ARGV[i + 3]), at, next_id)
    call('ZADD', K_WAITING, num(at), m)
    if at <= w then call('ZADD', K_READY, 0, m) end
    call('ZADD', K_PENDING, sid, sid)
    out[#out + 1] = sid
    out[#out + 1] = 1
  end
end
if made > 0 and ARGV[2] == '' then
  call('SET', KEYS[2], fmt('%d', next_id))
end
if made > 0 and KEYS[3] then call('SADD', KEYS[3], ARGV[3]) end
return out
"""
)

JOB_CLAIM = (
    _PRELUDE
    + """
-- ARGV[2]: worker, ARGV[3]: limit, ARGV[4]: lease (seconds).
-- Answers id, HGETALL for each job claimed, in claim order.
promote_waiting()
local l = mark('l')
if now > l then
  for _, m in ipairs(since(K_LEASES, l)) do
    local sid = member_id(m)
    local jk = K_JOB .. sid
    local h = call('HMGET', jk, 'attempts', 'max_attempts', 'batch')
    if h[2] and tonumber(h[1]) >= tonumber(h[2]) then
      dead_letter(jk, sid, m, h[3])  -- its last attempt had started: a poison pill
    else
      call('ZADD', K_READY, 0, m)
    end
  end
  call('HSET', K_META, 'l', num(now))
  l = now
end
local worker = ARGV[2]
local limit = tonumber(ARGV[3])
local lease_until = now + tonumber(ARGV[4])
local until_text = num(lease_until)
local out = {}
local taken = 0
local kept = 0
local again = {}  -- leased to before the watermark (the clock went back): ready at once
while taken < limit do
  local head = call('ZRANGE', K_READY, kept, kept + limit - taken - 1)
  if #head == 0 then break end
  for _, m in ipairs(head) do
    local sid = member_id(m)
    local jk = K_JOB .. sid
    local h = call('HMGET', jk, 'state', 'next_attempt_at', 'lease_until', 'attempts',
      'max_attempts', 'batch')
    local state = h[1]
    local due = (state == 'pending' and tonumber(h[2]) <= now)
      or (state == 'running' and tonumber(h[3]) <= now)
    if not due and (state == 'pending' or state == 'running') then
      kept = kept + 1  -- not due yet (the clock went back): it stays
    elseif not due then
      call('ZREM', K_READY, m)
    elseif state == 'running' and h[5] and tonumber(h[4]) >= tonumber(h[5]) then
      dead_letter(jk, sid, m, h[6])
    else
      call('ZREM', K_READY, m)
      if state == 'pending' then
        call('ZREM', K_WAITING, m)
        call('ZREM', K_PENDING, sid)
        call('ZADD', K_RUNNING, sid, sid)
      end
      call('HSET', jk, 'state', 'running', 'attempts', fmt('%d', tonumber(h[4]) + 1),
        'lease_owner', worker, 'lease_until', until_text)
      call('ZADD', K_LEASES, until_text, m)
      if lease_until <= l then again[#again + 1] = m end
      taken = taken + 1
      out[#out + 1] = sid
      out[#out + 1] = call('HGETALL', jk)
    end
  end
end
zadd_ready(again)  -- after the loop, so that its offsets stay right
return out
"""
)

JOB_HEARTBEAT = (
    _PRELUDE
    + """
-- ARGV[2]: worker, ARGV[3]: lease, ARGV[4...]: job ids. Answers the ids still held.
local lease_until = now + tonumber(ARGV[3])
local until_text = num(lease_until)
local l = mark('l')
local out = {}
for i = 4, #ARGV do
  local jk, _, m = held(ARGV[i], ARGV[2])
  if jk then
    call('HSET', jk, 'lease_until', until_text)
    call('ZADD', K_LEASES, until_text, m)
    if lease_until <= l then call('ZADD', K_READY, 0, m) end
    out[#out + 1] = ARGV[i]
  end
end
return out
"""
)

JOB_COMPLETE = (
    _PRELUDE
    + """
-- ARGV[2]: job id, ARGV[3]: worker. Answers 1 if settled, 0 if no live lease.
local sid = ARGV[2]
local jk, h, m = held(sid, ARGV[3])
if not jk then return 0 end
leave_running(jk, sid, m)
finish(jk, sid, 'done', h[6])
return 1
"""
)

JOB_FAIL = (
    _PRELUDE
    + """
-- ARGV[2]: job id, ARGV[3]: worker, ARGV[4]: retry ('1' or '0'), ARGV[5]: delay,
-- ARGV[6]: error class, ARGV[7]: reason, ARGV[8]: error (optional strings).
local sid = ARGV[2]
local jk, h, m = held(sid, ARGV[3])
if not jk then return 0 end
leave_running(jk, sid, m)
local reason = opt(ARGV[7])
local function put(field, value)  -- the decision's values replace the last attempt's
  if value then call('HSET', jk, field, value) else call('HDEL', jk, field) end
end
put('last_error', opt(ARGV[8]))
put('last_error_class', opt(ARGV[6]))
local retry = ARGV[4] == '1'
local exhausted = h[8] and tonumber(h[7]) >= tonumber(h[8])
if retry and not exhausted then
  make_pending(jk, sid, tonumber(h[4]), now + tonumber(ARGV[5]), mark('w'))
  return 1
end
if retry then
  reason = 'attempts'
elseif not reason or reason == '' then
  reason = 'not_retryable'
end
call('HSET', jk, 'reason', reason)
finish(jk, sid, 'dead', h[6])
return 1
"""
)

JOB_DEFER = (
    _PRELUDE
    + """
-- ARGV[2]: job id, ARGV[3]: worker, ARGV[4]: delay. The attempt is given back.
local sid = ARGV[2]
local jk, h, m = held(sid, ARGV[3])
if not jk then return 0 end
leave_running(jk, sid, m)
local attempts = tonumber(h[7]) - 1
if attempts < 0 then attempts = 0 end
call('HSET', jk, 'attempts', fmt('%d', attempts))
local at = now + tonumber(ARGV[4])
if now > at then at = now end
make_pending(jk, sid, tonumber(h[4]), at, mark('w'))
return 1
"""
)

# A dead job back to pending at `now` with no attempts (last_error kept).
_REPLAY = """
local function replay(sid, w)
  local jk = K_JOB .. sid
  local h = call('HMGET', jk, 'state', 'priority', 'batch')
  if h[1] ~= 'dead' then return 0 end
  call('ZREM', base .. ':dead', sid)
  call('ZREM', K_FINISHED, sid)
  call('ZREM', K_DEAD_AT, padded(sid))
  call('HDEL', jk, 'finished_at', 'reason')
  call('HSET', jk, 'attempts', '0')
  make_pending(jk, sid, tonumber(h[2]), now, w)
  if h[3] then call('HINCRBY', K_BATCH .. h[3], 'dead', -1) end
  return 1
end
"""

JOB_REPLAY = (
    _PRELUDE
    + _REPLAY
    + """
-- ARGV[2]: job id. Answers 1 if it was dead.
return replay(ARGV[2], mark('w'))
"""
)

JOB_REPLAY_ALL = (
    _PRELUDE
    + _REPLAY
    + """
-- ARGV[2]: at most this many. Answers how many were replayed.
local w = mark('w')
local ids = call('ZRANGE', base .. ':dead', 0, tonumber(ARGV[2]) - 1)
for _, sid in ipairs(ids) do replay(sid, w) end
return #ids
"""
)

JOB_PURGE = (
    _PRELUDE
    + """
-- KEYS[2] (not on a cluster): the set of queue names. ARGV[2]: older_than, ARGV[3]:
-- the cutoff ('' : now - older_than; later chunks send the first one's), ARGV[4]: at
-- most this many, ARGV[5]: the queue's name. Answers {removed, the cutoff used}.
local before
if ARGV[3] ~= '' then before = tonumber(ARGV[3]) else before = now - tonumber(ARGV[2]) end
local gone = call('ZRANGEBYSCORE', K_FINISHED, '-inf', '(' .. num(before),
  'LIMIT', 0, tonumber(ARGV[4]))
for _, sid in ipairs(gone) do
  local jk = K_JOB .. sid
  local h = call('HMGET', jk, 'state', 'key', 'batch')
  call('DEL', jk)
  call('ZREM', K_FINISHED, sid)
  if h[1] then call('ZREM', base .. ':' .. h[1], sid) end
  if h[1] == 'dead' then call('ZREM', K_DEAD_AT, padded(sid)) end
  if h[2] and call('HGET', K_KEYS, h[2]) == sid then call('HDEL', K_KEYS, h[2]) end
  if h[3] then
    local bk = K_BATCH .. h[3]
    if h[1] then call('HINCRBY', bk, h[1], -1) end
    if call('HINCRBY', bk, 'total', -1) <= 0 then call('DEL', bk) end
  end
end
if #gone > 0 then
  local left = call('ZCARD', K_PENDING) + call('ZCARD', K_RUNNING)
    + call('ZCARD', base .. ':done') + call('ZCARD', base .. ':dead')
  if left == 0 then
    call('DEL', K_META)  -- watermarks mean nothing for an empty queue
    if KEYS[2] then call('SREM', KEYS[2], ARGV[5]) end
  end
end
return {#gone, num(before)}
"""
)

JOB_STATS = (
    _PRELUDE
    + """
-- Answers pending, running, done, dead, due, lag (text).
local stamp = num(now)
local due = call('ZCOUNT', K_WAITING, '-inf', stamp) + call('ZCOUNT', K_LEASES, '-inf', stamp)
local first = call('ZRANGE', K_WAITING, 0, 0, 'WITHSCORES')
local lag = 0
if first[2] and tonumber(first[2]) <= now then lag = now - tonumber(first[2]) end
return {call('ZCARD', K_PENDING), call('ZCARD', K_RUNNING), call('ZCARD', base .. ':done'),
  call('ZCARD', base .. ':dead'), due, num(lag)}
"""
)

# Read-only scripts: no clock needed.
JOB_GET = """
-- KEYS[1]: the queue's base. ARGV[1]: job id. Answers the job's hash (empty: none).
return redis.call('HGETALL', KEYS[1] .. ':j:' .. ARGV[1])
"""

JOB_LIST = """
-- KEYS[1]: the queue's base. ARGV[1]: state ('' : any), ARGV[2]: limit.
-- Answers id, HGETALL for each job: by id, dead ones by finished_at then id.
local base, call = KEYS[1], redis.call
local state, limit = ARGV[1], tonumber(ARGV[2])
local ids = {}
if state == 'dead' then
  for _, padded in ipairs(call('ZRANGE', base .. ':dead_at', 0, limit - 1)) do
    ids[#ids + 1] = tonumber(padded)
  end
elseif state ~= '' then
  for _, sid in ipairs(call('ZRANGE', base .. ':' .. state, 0, limit - 1)) do
    ids[#ids + 1] = tonumber(sid)
  end
else
  -- the first `limit` ids overall are among the first `limit` of each state
  for _, each in ipairs({'pending', 'running', 'done', 'dead'}) do
    for _, sid in ipairs(call('ZRANGE', base .. ':' .. each, 0, limit - 1)) do
      ids[#ids + 1] = tonumber(sid)
    end
  end
  table.sort(ids)
end
local out = {}
for i = 1, math.min(limit, #ids) do
  local sid = string.format('%d', ids[i])
  out[#out + 1] = sid
  out[#out + 1] = call('HGETALL', base .. ':j:' .. sid)
end
return out
"""

JOB_PROGRESS = """
-- KEYS[1]: the queue's base. ARGV[1]: the batch. Answers total, done, dead.
return redis.call('HMGET', KEYS[1] .. ':b:' .. ARGV[1], 'total', 'done', 'dead')
"""

JOB_COUNT = """
-- KEYS[1]: the queue's base. Answers how many jobs it holds.
local base, call = KEYS[1], redis.call
return call('ZCARD', base .. ':pending') + call('ZCARD', base .. ':running')
  + call('ZCARD', base .. ':done') + call('ZCARD', base .. ':dead')
"""

JOB_NAMES = """
-- KEYS[1]: the set of queue names. Answers its members.
return redis.call('SMEMBERS', KEYS[1])
"""

# On a cluster the counter and the names live in slots of their own: the store
# reserves ids and records a queue's name with these before enqueueing.
JOB_RESERVE = """
-- KEYS[1]: the id counter. ARGV[1]: how many ids. Answers the last one reserved.
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

JOB_REGISTER = """
-- KEYS[1]: the set of queue names. ARGV[1]: a queue's name.
return redis.call('SADD', KEYS[1], ARGV[1])
"""

#: Each job operation's script, by the name the store runs it under (merged into
#: :data:`~resilience.storage.redis.scripts.SOURCES`, which has the SHA1s).
JOB_SOURCES = {
    "job_enqueue": JOB_ENQUEUE,
    "job_claim": JOB_CLAIM,
    "job_heartbeat": JOB_HEARTBEAT,
    "job_complete": JOB_COMPLETE,
    "job_fail": JOB_FAIL,
    "job_defer": JOB_DEFER,
    "job_replay": JOB_REPLAY,
    "job_replay_all": JOB_REPLAY_ALL,
    "job_purge": JOB_PURGE,
    "job_stats": JOB_STATS,
    "job_get": JOB_GET,
    "job_list": JOB_LIST,
    "job_progress": JOB_PROGRESS,
    "job_count": JOB_COUNT,
    "job_names": JOB_NAMES,
    "job_reserve": JOB_RESERVE,
    "job_register": JOB_REGISTER,
}
