-- ARGV: min (a ZRANGEBYLEX bound), prefix, limit. A page of topics by name
-- from the sorted set herald:topic-names: for each, {name, retained events,
-- oldest retained id or '', newest id ever given out}. Stops at the first
-- name that does not start with the prefix.
local prefix = ARGV[2]
local names = redis.call('ZRANGEBYLEX', 'herald:topic-names', ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, topic in ipairs(names) do
  if string.sub(topic, 1, #prefix) ~= prefix then break end
  local stream = 'herald:{' .. topic .. '}:events'
  local n = redis.call('XLEN', stream)
  local first = ''
  if n > 0 then
    first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
  end
  local last = redis.call('HGET', 'herald:{' .. topic .. '}:meta', 'last') or '0-0'
  out[#out + 1] = {topic, n, first, last}
end
return out
