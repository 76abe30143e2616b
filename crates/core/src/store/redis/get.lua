-- A task and, while it is queued, its place in the queue (1 = next), in
-- one round trip. ARGV: id. Returns {json, position} ({'', 0}: no such
-- task; position 0: not queued).
local json = redis.call('GET', 'herald:task:' .. ARGV[1])
if not json then return {'', 0} end
local t = cjson.decode(json)
if t.status ~= 'queued' then return {json, 0} end
local rank = redis.call('ZRANK', 'herald:queue:' .. t.queue, ARGV[1])
return {json, rank and rank + 1 or 0}
