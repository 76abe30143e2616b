-- ARGV: max_events, key_ttl_secs, write_id, mark_ttl_secs, n,
-- then n × (topic, kind, data, key).
local max, key_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local mark, mark_ttl, n = mark_of(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local done = redis.call('GET', mark)
if done then
  return cjson.decode(done)
end
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local b = 6 + i * 4
  out[#out + 1] = append(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], max, key_ttl, now)
end
redis.call('SET', mark, cjson.encode(out), 'EX', mark_ttl)
return out
