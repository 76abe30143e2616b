-- Compare-and-set of one task, with everything that goes with it.
-- ARGV: id, old_json ('' = new task), new_json, queue, seq, old_status
-- ('' = new), new_status, lease_expires ('' = none), emit_kind ('' = none),
-- emit_data, max_events, key_ttl, finished_ttl, idem_key ('' = none),
-- write_id, mark_ttl, full_mark ('1': the mark also keeps the status before
-- and the task after, for a client retrying with its own key), available
-- (when a task queued again becomes claimable; '' = now).
-- Returns {1, event_id} on success, {0, current_id_for_idem_or_''} when the
-- task changed meanwhile (or the idempotency key was taken).
local id, old, new, queue, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local old_status, new_status, lease = ARGV[6], ARGV[7], ARGV[8]
local emit_kind, emit_data = ARGV[9], ARGV[10]
local max, key_ttl, finished_ttl, idem = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local mark, mark_ttl, full_mark = mark_of(ARGV[15]), tonumber(ARGV[16]), ARGV[17]
local available = ARGV[18]
local done = redis.call('GET', mark)
if done then
  local m = cjson.decode(done)
  return {m[1], m[2]}
end
local key = 'herald:task:' .. id
local cur = redis.call('GET', key)
if old == '' then
  if cur then return {0, ''} end
  if idem ~= '' then
    local taken = redis.call('SET', 'herald:queue:' .. queue .. ':idem:' .. idem, id, 'NX', 'EX', key_ttl)
    if not taken then
      return {0, redis.call('GET', 'herald:queue:' .. queue .. ':idem:' .. idem) or ''}
    end
  end
elseif cur ~= old then
  return {0, ''}
end
redis.call('SET', key, new)
local qkey = 'herald:queue:' .. queue
if new_status == 'queued' then
  redis.call('ZADD', qkey, seq, id)
else
  redis.call('ZREM', qkey, id)
end
-- The listings' indexes: every task of the queue, and those of each status,
-- by seq (see list.lua).
local lkey = 'herald:queue-tasks:' .. queue
if old_status == '' then
  redis.call('ZADD', lkey, seq, id)
end
if old_status ~= new_status then
  if old_status ~= '' then
    redis.call('ZREM', lkey .. '|' .. old_status, id)
  end
  redis.call('ZADD', lkey .. '|' .. new_status, seq, id)
end
-- Tasks waiting out a retry backoff, every queue's, by when they become
-- claimable: claimable.lua steps over them, every node's engine sleeps
-- until the next one.
if new_status == 'queued' and available ~= '' then
  redis.call('ZADD', 'herald:waiting', available, queue .. '|' .. id)
else
  redis.call('ZREM', 'herald:waiting', queue .. '|' .. id)
end
if new_status == 'running' and lease ~= '' then
  redis.call('ZADD', 'herald:leases', lease, id)
else
  redis.call('ZREM', 'herald:leases', id)
end
if old_status ~= new_status then
  if old_status ~= '' then
    redis.call('HINCRBY', 'herald:task-counts', queue .. '|' .. old_status, -1)
  end
  redis.call('HINCRBY', 'herald:task-counts', queue .. '|' .. new_status, 1)
end
if new_status == 'succeeded' or new_status == 'failed' or new_status == 'cancelled' then
  redis.call('EXPIRE', key, finished_ttl)
end
-- Wake claims and position watchers on every node. A task that must wait
-- first wakes no claim: 'later' has every node's engine look for the next
-- task to become claimable, and wake a claim then.
if new_status == 'queued' and old_status ~= 'queued' then
  if available ~= '' then
    redis.call('PUBLISH', 'herald:signals', 'later|' .. queue)
  else
    redis.call('PUBLISH', 'herald:signals', 'work|' .. queue)
  end
end
if (old_status == 'queued') ~= (new_status == 'queued') and old_status ~= '' then
  redis.call('PUBLISH', 'herald:signals', 'moved|' .. queue)
elseif old_status ~= new_status then
  -- Nothing moved in the queue, but the counts did.
  redis.call('PUBLISH', 'herald:signals', 'status|' .. queue)
end
local event_id = ''
if emit_kind ~= '' then
  local r = append('tasks.' .. id, emit_kind, emit_data, '', max, key_ttl, now_ms())
  event_id = r[1]
end
if full_mark == '1' then
  redis.call('SET', mark, cjson.encode({1, event_id, old_status, new}), 'EX', mark_ttl)
else
  redis.call('SET', mark, cjson.encode({1, event_id}), 'EX', mark_ttl)
end
return {1, event_id}
