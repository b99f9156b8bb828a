"""The Lua scripts of :class:`~resilience.storage.redis.RedisStore`, and their SHA1s.

Every state change is one of these scripts, run atomically by the server.
Rules shared by all of them:

* Time is the server's: ``redis.call('TIME')``, read inside the script. The
  client's clock is never sent.
* Keys arrive in ``KEYS`` and every other value in ``ARGV``: nothing the caller
  chooses is ever pasted into the script text, so the scripts are constants
  (cached by SHA1 on the server; redis-py reloads one on ``NOSCRIPT``).
* Floats cross the wire as text that round-trips exactly: the client sends
  Python's ``repr``, the script stores and answers ``%.17g``, and the server
  time goes back as ``TIME``'s two integers, which the client combines with
  the script's own arithmetic. Lua numbers are IEEE
  doubles like Python's floats, and each script performs the arithmetic of the
  pure core (:mod:`resilience._core.bucket`) in the same order, on operands the
  client precomputed the same way, so both sides get bit-identical results.
"""

from __future__ import annotations

import hashlib

from .job_scripts import JOB_SOURCES

# Shared Lua prelude: the server time in seconds, and short names. Plain
# statements, no closures: cheaper per call.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fmt = string.format
local ceil = math.ceil
"""

# A key's lifetime in milliseconds: until bucket state `x` is in the past, plus the
# margin. A whole number below 1e13, which Redis writes without an exponent.
_TTL = "math.min(1e13, math.max(1, ceil((x - now) * 1000) + margin))"

BUCKET_TAKE = (
    _PRELUDE
    + """
-- KEYS: one per bucket. ARGV[1]: max_wait (-1: unlimited), ARGV[2]: expiry margin (ms),
-- then for bucket i: ARGV[3i] headroom_for(cost), ARGV[3i+1] capacity - cost*interval,
-- ARGV[3i+2] cost*interval. The rule of _bucket.take_all, all buckets or none.
-- Answers {granted, TIME seconds, TIME microseconds, each bucket's stored text or ''}:
-- the client rebuilds `now` with the same arithmetic and decides with the pure core.
local n = #KEYS
local max_wait = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local raw = {}
local old = {}
local start = now
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  local tat = -math.huge
  if v then tat = tonumber(v) else v = '' end
  raw[i] = v
  old[i] = tat
  if tat - tonumber(ARGV[3 * i]) > now then
    local s = tat - tonumber(ARGV[3 * i + 1])
    if s > start then start = s end
  end
end
-- _bucket.exact_delay: the smallest delay with now + delay >= start.
local delay = 0
if start > now then
  delay = start - now
  while now + delay < start do
    local reached = now + delay
    local _, e = math.frexp(delay)
    local up = delay + math.ldexp(1, e - 53)
    local grown = delay + (start - reached)
    if grown > up then delay = grown else delay = up end
  end
end
local granted = 0
if max_wait < 0 or delay <= max_wait then
  granted = 1
  for i = 1, n do
    local x = old[i]
    if start > x then x = start end
    x = x + tonumber(ARGV[3 * i + 2])
    redis.call('SET', KEYS[i], fmt('%.17g', x), 'PX', TTL)
  end
end
local out = {granted, t[1], t[2]}
for i = 1, n do out[i + 3] = raw[i] end
return out
""".replace("TTL", _TTL)
)

BUCKET_TAKE_ONE = (
    _PRELUDE
    + """
-- The hot path: one bucket. KEYS[1]: the bucket. ARGV[1]: headroom_for(cost),
-- ARGV[2]: cost*interval, ARGV[3]: expiry margin (ms), ARGV[4]: max_wait (-1:
-- unlimited), ARGV[5]: capacity - cost*interval. When the bucket holds the tokens
-- (_bucket.take_now) nothing else is computed; otherwise the waiting rule of
-- BUCKET_TAKE. Answers one string, cheaper to send and parse than an array:
-- "granted TIME-seconds TIME-microseconds state-before" (state empty: full).
local v = redis.call('GET', KEYS[1])
local x = -math.huge
if v then x = tonumber(v) else v = '' end
if x - tonumber(ARGV[1]) > now then
  local max_wait = tonumber(ARGV[4])
  if max_wait == 0 then return '0 ' .. t[1] .. ' ' .. t[2] .. ' ' .. v end
  local start = x - tonumber(ARGV[5])
  local delay = start - now
  while now + delay < start do
    local reached = now + delay
    local _, e = math.frexp(delay)
    local up = delay + math.ldexp(1, e - 53)
    local grown = delay + (start - reached)
    if grown > up then delay = grown else delay = up end
  end
  if max_wait >= 0 and delay > max_wait then return '0 ' .. t[1] .. ' ' .. t[2] .. ' ' .. v end
  if start > x then x = start end
elseif now > x then
  x = now
end
x = x + tonumber(ARGV[2])
local margin = tonumber(ARGV[3])
redis.call('SET', KEYS[1], fmt('%.17g', x), 'PX', TTL)
return '1 ' .. t[1] .. ' ' .. t[2] .. ' ' .. v
""".replace("TTL", _TTL)
)

BUCKET_REFUND = (
    _PRELUDE
    + """
-- KEYS: buckets. ARGV[1]: expiry margin (ms), then ARGV[2i], ARGV[2i+1]: before, after.
-- _bucket.refund: back to `before` only if the bucket is still at `after`.
local margin = tonumber(ARGV[1])
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and tonumber(v) == tonumber(ARGV[2 * i + 1]) then
    local before = tonumber(ARGV[2 * i])
    if before <= now then
      redis.call('DEL', KEYS[i])  -- full again: forgetting it is the same
    else
      local x = before
      redis.call('SET', KEYS[i], fmt('%.17g', x), 'PX', TTL)
    end
  end
end
return 1
""".replace("TTL", _TTL)
)

BUCKET_PENALIZE = (
    _PRELUDE
    + """
-- KEYS[1]: the bucket. ARGV[1]: seconds, ARGV[2]: capacity - interval, ARGV[3]: margin (ms).
-- _bucket.penalize: a pause never shortens an earlier, longer one.
local v = redis.call('GET', KEYS[1])
local tat = -math.huge
if v then tat = tonumber(v) end
local x = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
if x > tat then
  local margin = tonumber(ARGV[3])
  redis.call('SET', KEYS[1], fmt('%.17g', x), 'PX', TTL)
end
return {t[1], t[2], v or ''}
""".replace("TTL", _TTL)
)

BUCKET_READ = (
    _PRELUDE
    + """
-- KEYS[1]: the bucket. Read-only: the server time and the bucket's state.
return {t[1], t[2], redis.call('GET', KEYS[1]) or ''}
"""
)

# A circuit is one hash: s state, v version, t trips, r reason, u break end (server
# time), p probe permits out, k successful probes, d when the permits lapse, e the
# circuit's epoch: the server time ("seconds.micros") of the transition that created
# the hash. A hash without one (missing, or written by an older release) has epoch ''.
# A snapshot is {state, version, trips, reason, seconds of break left, epoch, the
# server time of the answer}: the client tells a circuit Redis lost (a restart without
# persistence, an eviction) from a late answer with the epoch and that time.
_SNAPSHOT = """
local at = t[1] .. '.' .. fmt('%06d', tonumber(t[2]))
local function snapshot(key)
  local h = redis.call('HMGET', key, 's', 'v', 't', 'r', 'u', 'e')
  if not h[2] then return {'closed', 0, 0, 'initial state', '0', h[6] or '', at} end
  local remaining = 0
  if h[1] == 'open' then
    remaining = tonumber(h[5]) - now
    if remaining < 0 then remaining = 0 end
  end
  return {h[1], tonumber(h[2]), tonumber(h[3]), h[4], fmt('%.17g', remaining), h[6] or '', at}
end
"""

BREAKER_LOAD = (
    _PRELUDE
    + _SNAPSHOT
    + """
return snapshot(KEYS[1])
"""
)

# The compare-and-set of every circuit script is on (epoch, version). The epoch '*'
# (a client that has never seen the circuit) matches any.
BREAKER_TRANSITION = (
    _PRELUDE
    + _SNAPSHOT
    + """
-- KEYS[1]: the circuit. ARGV: expected version, expected epoch, state, reason, trips,
-- break duration, pub/sub channel ('' for none).
local h = redis.call('HMGET', KEYS[1], 'v', 'e')
local version = tonumber(h[1] or '0')
local epoch = h[2] or ''
local expected = tonumber(ARGV[1])
local wanted = ARGV[2]
local applies = version == expected and (wanted == '*' or wanted == epoch)
if not applies and epoch == '' and wanted ~= '' and wanted ~= '*' and expected >= 0 then
  -- The caller knew this circuit in an epoch that is gone: Redis lost it. Nobody can
  -- hold a newer view (one would have made a new epoch), so the caller's move stands.
  applies = true
end
if not applies then
  local snap = snapshot(KEYS[1])
  table.insert(snap, 1, 0)
  return snap
end
if epoch == '' then epoch = at end
local until_ = 0
if ARGV[3] == 'open' then until_ = now + tonumber(ARGV[6]) end
redis.call('HSET', KEYS[1], 's', ARGV[3], 'v', fmt('%d', expected + 1), 't', ARGV[5],
  'r', ARGV[4], 'u', fmt('%.17g', until_), 'p', '0', 'k', '0', 'd', '0', 'e', epoch)
local snap = snapshot(KEYS[1])
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], cjson.encode(snap))
end
table.insert(snap, 1, 1)
return snap
"""
)

BREAKER_ACQUIRE_PROBE = (
    _PRELUDE
    + """
-- KEYS[1]: the circuit. ARGV: version, limit, permit lease (seconds), epoch.
-- The rule of _core.breaker.take_probe: the permits out lapse together `lease`
-- seconds after the last one was handed out (their holders are presumed dead).
local h = redis.call('HMGET', KEYS[1], 's', 'v', 'p', 'd', 'e')
if h[1] ~= 'half_open' or tonumber(h[2] or '0') ~= tonumber(ARGV[1]) then return 0 end
if ARGV[4] ~= '*' and (h[5] or '') ~= ARGV[4] then return 0 end
local out = tonumber(h[3] or '0')
if now >= tonumber(h[4] or '0') then out = 0 end
if out >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'p', fmt('%d', out + 1), 'd', fmt('%.17g', now + tonumber(ARGV[3])))
return 1
"""
)

BREAKER_RELEASE_PROBE = """
-- KEYS[1]: the circuit. ARGV: version, verdict ('1' succeeded, '0' failed, '' none), epoch.
local h = redis.call('HMGET', KEYS[1], 'v', 'p', 'k', 'e')
if tonumber(h[1] or '0') ~= tonumber(ARGV[1]) then return -1 end
if ARGV[3] ~= '*' and (h[4] or '') ~= ARGV[3] then return -1 end
local out = tonumber(h[2] or '0') - 1
if out < 0 then out = 0 end
local ok = tonumber(h[3] or '0')
if ARGV[2] == '1' then ok = ok + 1 end
redis.call('HSET', KEYS[1], 'p', string.format('%d', out), 'k', string.format('%d', ok))
return ok
"""

#: Each operation's script, by the name the store runs it under.
SOURCES = {
    "take": BUCKET_TAKE,
    "take_one": BUCKET_TAKE_ONE,
    "refund": BUCKET_REFUND,
    "penalize": BUCKET_PENALIZE,
    "read": BUCKET_READ,
    "load": BREAKER_LOAD,
    "transition": BREAKER_TRANSITION,
    "acquire": BREAKER_ACQUIRE_PROBE,
    "release": BREAKER_RELEASE_PROBE,
    **JOB_SOURCES,  # the job queues' scripts (job_scripts)
}

#: Each operation's SHA1, for EVALSHA (the server caches scripts by it).
SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SOURCES.items()}
