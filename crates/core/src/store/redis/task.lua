-- Compare-and-set of one task, with everything that goes with it.
-- ARGV: id, old_json ('' = new task), new_json, queue, seq ('' = a new task
-- numbered here: its JSON holds `"seq":0`, replaced with the number), old_status
-- ('' = new), new_status, lease_expires ('' = none), emit_kind ('' = none),
-- emit_data, max_events, key_ttl, finished_ttl, idem_key ('' = none),
-- write_id, mark_ttl, full_mark ('1': the mark also keeps the status before
-- and the task after, for a client retrying with its own key), available
-- (when a task queued again becomes claimable; '' = now).
-- Returns {code, a, b}:
--   {1, event_id, seq}    written;
--   {0, current_json, ''} the task changed meanwhile: what it is now, so the
--                         caller decides again without reading it ('' = gone);
--   {2, holder_json, ''}  the idempotency key names another task ('' = gone);
--   {3, mark, ''}         this write was made already: the mark it left.
local id, old, new, queue, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local old_status, new_status, lease = ARGV[6], ARGV[7], ARGV[8]
local emit_kind, emit_data = ARGV[9], ARGV[10]
local max, key_ttl, finished_ttl, idem = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local mark, mark_ttl, full_mark = mark_of(ARGV[15]), tonumber(ARGV[16]), ARGV[17]
local available = ARGV[18]
local done = redis.call('GET', mark)
if done then
  return {3, done, ''}
end
local key = 'herald:task:' .. id
local cur = redis.call('GET', key)
if old == '' then
  if cur then return {0, cur, ''} end
  local at
  if seq == '' then
    -- Numbered here rather than by a call of its own before: one round
    -- trip per enqueue. serde writes `id`, `queue`, then `seq`, and a
    -- quote inside a string is escaped, so the first `,"seq":0,` is the
    -- field itself. (Checked before the first write.)
    at = string.find(new, ',"seq":0,', 1, true)
    if not at then
      return redis.error_reply('HERALD a new task without "seq":0')
    end
  end
  if idem ~= '' then
    local ikey = 'herald:queue:' .. queue .. ':idem:' .. idem
    local taken = redis.call('SET', ikey, id, 'NX', 'EX', key_ttl)
    if not taken then
      local holder = redis.call('GET', ikey)
      return {2, holder and redis.call('GET', 'herald:task:' .. holder) or '', ''}
    end
  end
  if at then
    seq = tostring(redis.call('INCR', 'herald:task-seq'))
    new = string.sub(new, 1, at - 1) .. ',"seq":' .. seq .. ',' .. string.sub(new, at + 9)
  end
elseif cur ~= old then
  return {0, cur or '', ''}
end
redis.call('SET', key, new)
settle(id, queue, seq, old_status, new_status, lease, available, finished_ttl)
local event_id = ''
if emit_kind ~= '' then
  local r = append('tasks.' .. id, emit_kind, emit_data, '', max, key_ttl, now_ms())
  event_id = r[1]
end
if full_mark == '1' then
  redis.call('SET', mark, cjson.encode({1, event_id, old_status, new}), 'EX', mark_ttl)
else
  redis.call('SET', mark, cjson.encode({1, event_id, seq}), 'EX', mark_ttl)
end
return {1, event_id, seq}
