-- The oldest claimable task of a queue. ARGV: queue, now (ms).
-- Walks the queue (every queued task, by seq) from its head and steps over
-- tasks waiting out a retry backoff (in `herald:waiting`, member
-- 'queue|id', score = when they become claimable), which keep their place.
-- Returns the task's id, or false when none is claimable.
local queue, now = ARGV[1], tonumber(ARGV[2])
local qkey = 'herald:queue:' .. queue
local from = 0
while true do
  local ids = redis.call('ZRANGE', qkey, from, from + 31)
  if #ids == 0 then return false end
  for _, id in ipairs(ids) do
    local at = redis.call('ZSCORE', 'herald:waiting', queue .. '|' .. id)
    if not at or tonumber(at) <= now then return id end
  end
  from = from + 32
end
