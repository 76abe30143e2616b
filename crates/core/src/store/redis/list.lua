-- ARGV: index (a sorted set of task ids by seq), after_seq (-1: from the
-- start), limit. Returns the tasks' JSON in seq order. An id whose task has
-- expired (finished tasks do) is dropped from the index on the way.
local index, limit = ARGV[1], tonumber(ARGV[3])
local from = '(' .. ARGV[2]
local out = {}
while #out < limit do
  local ids = redis.call('ZRANGEBYSCORE', index, from, '+inf', 'WITHSCORES', 'LIMIT', 0, limit - #out)
  if #ids == 0 then break end
  for i = 1, #ids, 2 do
    local task = redis.call('GET', 'herald:task:' .. ids[i])
    if task then
      out[#out + 1] = task
    else
      redis.call('ZREM', index, ids[i])
    end
    from = '(' .. ids[i + 1]
  end
end
return out
