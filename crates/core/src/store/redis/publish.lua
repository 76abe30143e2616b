-- ARGV: max_events, key_ttl_secs, n, then n × (topic, kind, data, key).
local max, key_ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 4
  out[#out + 1] = append(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], max, key_ttl, now)
end
return out
