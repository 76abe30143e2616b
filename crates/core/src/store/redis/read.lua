-- ARGV: topic, mode ('oldest' | 'after'), id, limit.
-- Returns {gap, next, entries} with the memory store's semantics.
local topic, mode, id, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local stream = 'herald:{' .. topic .. '}:events'
local meta = 'herald:{' .. topic .. '}:meta'
local last = redis.call('HGET', meta, 'last')
if not last then
  local gap = 0
  if mode == 'after' and id ~= '0-0' then gap = 1 end
  return {gap, '0-0', {}}
end
local trimmed = redis.call('HGET', meta, 'trimmed') or '0-0'
local from, gap, exact = '-', 0, false
if mode == 'after' and id ~= trimmed then
  if #redis.call('XRANGE', stream, id, id) > 0 then
    from, exact = '(' .. id, true
  else
    gap = 1
  end
elseif mode == 'after' then
  exact = true
end
local entries = {}
if limit > 0 then
  entries = redis.call('XRANGE', stream, from, '+', 'COUNT', limit)
end
local next = trimmed
if #entries > 0 then
  next = entries[#entries][1]
elseif exact then
  next = id
end
return {gap, next, entries}
