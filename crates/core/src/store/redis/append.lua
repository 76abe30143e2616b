-- Shared by the scripts that append events: herald's id rule and retention,
-- applied atomically inside Redis. Keys hash on the topic ({topic}) so one
-- topic's keys live together on a Redis Cluster slot.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

-- Appends one event; returns {id, kind, data, replayed}. A new event comes
-- back as {id, '', '', 0}: the caller has its kind and data already, and
-- echoing a large payload back would cost as much as storing it.
local function append(topic, kind, data, key, max, key_ttl, now)
  local stream = 'herald:{' .. topic .. '}:events'
  local meta = 'herald:{' .. topic .. '}:meta'
  local idem = 'herald:{' .. topic .. '}:idem:' .. key
  if key ~= '' then
    local known = redis.call('GET', idem)
    if known then
      local e = redis.call('XRANGE', stream, known, known)
      if #e > 0 then
        local f = e[1][2]
        return {known, f[2], f[4], 1}
      end
    end
  end
  local last = redis.call('HGET', meta, 'last') or '0-0'
  local lms, lseq = split_id(last)
  local id
  if now > lms then
    id = string.format('%.0f', now) .. '-0'
  else
    id = string.format('%.0f', lms) .. '-' .. string.format('%.0f', lseq + 1)
  end
  redis.call('XADD', stream, id, 'k', kind, 'd', data)
  redis.call('HSET', meta, 'last', id)
  if redis.call('SADD', 'herald:topics', topic) == 1 then
    redis.call('ZADD', 'herald:topic-names', 0, topic)
  end
  if key ~= '' then
    redis.call('SET', idem, id, 'EX', key_ttl)
  end
  local len = redis.call('XLEN', stream)
  if len > max then
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - max)
    redis.call('HSET', meta, 'trimmed', old[#old][1])
    redis.call('XTRIM', stream, 'MAXLEN', max)
  end
  redis.call('PUBLISH', 'herald:events', cjson.encode({topic, id, kind, data}))
  return {id, '', '', 0}
end

-- A write sent again after its answer was lost (see resend.rs) finds the
-- mark its first arrival left, and answers from it instead of writing twice.
local function mark_of(wid)
  return 'herald:write:' .. wid
end
