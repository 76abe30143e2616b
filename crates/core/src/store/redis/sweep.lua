-- ARGV: cutoff_ms. Drops every topic's events older than the cutoff.
local cutoff = ARGV[1]
for _, topic in ipairs(redis.call('SMEMBERS', 'herald:topics')) do
  local stream = 'herald:{' .. topic .. '}:events'
  local old = redis.call('XREVRANGE', stream, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
  if #old > 0 then
    redis.call('HSET', 'herald:{' .. topic .. '}:meta', 'trimmed', old[1][1])
    redis.call('XTRIM', stream, 'MINID', cutoff .. '-0')
  end
end
return 1
