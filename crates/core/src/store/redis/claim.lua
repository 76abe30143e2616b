-- Hands the oldest claimable task of a queue to a worker, in one step: it
-- finds the task and claims it where no other claim can come between, so
-- workers racing for the head of a queue never retry (BullMQ's shape:
-- one script per state change).
--
-- Why the claim is made here and not by the Rust state machine with a
-- compare-and-set, as every other change is: the machine would first need
-- the task, and every worker woken at once would read the same head and
-- all but one would lose and go round again (a round trip, and on a Redis
-- with `appendfsync always` an fsync, each). A claim decides nothing: it
-- sets the status, counts the attempt, stamps the time and takes the lease
-- that Rust built with `machine::lease`. `machine::claim` stays the
-- reference, and a test (tasks.rs) checks that both make the same task.
--
-- ARGV: queue, now (ms), token, lease_json (the lease as serde writes it),
-- lease_expires, write_id, mark_ttl.
-- Returns the claimed task's JSON, or false when none is claimable.
local queue, now, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local lease_json, lease_expires = ARGV[4], ARGV[5]
local mark, mark_ttl = mark_of(ARGV[6]), tonumber(ARGV[7])
local done = redis.call('GET', mark)
if done then
  -- Sent again after its answer was lost: the task it claimed then.
  return redis.call('GET', 'herald:task:' .. cjson.decode(done)[2])
end
local qkey = 'herald:queue:' .. queue
-- Walks the queue from its head and steps over tasks waiting out a retry
-- backoff (in `herald:waiting`, member 'queue|id', score = when they
-- become claimable), which keep their place: `machine::claimable`.
local function next_claimable()
  local from = 0
  while true do
    local ids = redis.call('ZRANGE', qkey, from, from + 31)
    if #ids == 0 then return nil end
    for _, id in ipairs(ids) do
      local at = redis.call('ZSCORE', 'herald:waiting', queue .. '|' .. id)
      if not at or tonumber(at) <= now then
        local json = redis.call('GET', 'herald:task:' .. id)
        if json then
          local t = cjson.decode(json)
          local wait = t.available_ms
          if t.status == 'queued' and (wait == nil or wait == cjson.null or wait <= now) then
            return id, t
          end
        end
      end
    end
    from = from + 32
  end
end
local id, t = next_claimable()
if not id then return false end
-- Only the fields `machine::claim` sets. Through cjson, text comes back
-- as it went in, and whole numbers below 10^14 (times in ms, counters)
-- too; the one float a claim writes, the lease's `secs`, is spliced in as
-- Rust wrote it, in place of the token (random, so no payload holds it).
-- A queued task's `progress` is always null (enqueue and requeue clear it).
t.status = 'running'
t.attempts = t.attempts + 1
t.started_ms = now
t.updated_ms = now
t.available_ms = cjson.null
t.lease = token
local new = cjson.encode(t)
local hole = '"lease":"' .. token .. '"'
local at = string.find(new, hole, 1, true)
new = string.sub(new, 1, at - 1) .. '"lease":' .. lease_json .. string.sub(new, at + #hole)
redis.call('SET', 'herald:task:' .. id, new)
settle(id, queue, t.seq, 'queued', 'running', lease_expires, '', 0)
redis.call('SET', mark, cjson.encode({1, id}), 'EX', mark_ttl)
return new
