-- Shared by the scripts that change a task (task.lua, claim.lua): every
-- key that follows a task's status, kept in the same atomic step as the
-- task itself.

-- The task `id` of `queue` (enqueue order `seq`) went from `old_status`
-- ('' = it is new) to `new_status`. `lease`: its lease deadline while
-- running ('' = none); `available`: when a task queued again becomes
-- claimable ('' = now).
local function settle(id, queue, seq, old_status, new_status, lease, available, finished_ttl)
  local key = 'herald:task:' .. id
  local qkey = 'herald:queue:' .. queue
  if new_status == 'queued' then
    redis.call('ZADD', qkey, seq, id)
  elseif old_status == 'queued' or old_status == '' then
    redis.call('ZREM', qkey, id)
  end
  -- The listings' indexes: every task of the queue, and those of each
  -- status, by seq (see list.lua).
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
  -- claimable: claim.lua steps over them, every node's engine sleeps until
  -- the next one.
  if new_status == 'queued' and available ~= '' then
    redis.call('ZADD', 'herald:waiting', available, queue .. '|' .. id)
  elseif old_status == 'queued' then
    redis.call('ZREM', 'herald:waiting', queue .. '|' .. id)
  end
  if new_status == 'running' and lease ~= '' then
    redis.call('ZADD', 'herald:leases', lease, id)
  elseif old_status == 'running' then
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
end
