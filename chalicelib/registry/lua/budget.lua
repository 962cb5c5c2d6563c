-- KEYS and ARGV: named locals, from chalicelib/registry/scripts.py's BudgetKeys and BudgetArgs.
-- A sharded publish's admission: the budget (none when off), then the stream's append, in the unsharded
-- slot; take and queue return {0, count, 0, suffix}.
-- take (a sharded inline publish): all of ``count`` once the bucket holds min(count, reserve or 1), perhaps
-- leaving a debt; else {2, wait ms, 1}. queue (a sharded queued publish): the same against the queue's
-- budget, which holds up to ``backlog`` posts. lease (a worker's chunk): min(count, what the bucket holds
-- beyond the reserve), never a debt; else {0, 0, wait ms until it does} (a whole chunk at once: one round
-- trip per chunk, not one per token as the bucket refills).
-- uses: buckets, streams
local now = now_ms(test_now)
if mode == 'lease' then
  local tokens = level(posts_key, budget, budget, now)
  local granted = math.min(count, budget - reserve)
  if tokens - reserve < granted then return {0, 0, wait_for(tokens, granted + reserve, budget)} end
  spend(posts_key, tokens, granted, budget, budget, now)
  return {0, granted, 0}
end
if budget > 0 then
  local key, capacity, need = posts_key, budget, math.min(count, math.max(reserve, 1))
  if mode == 'queue' then key, capacity, need = queue_key, backlog, math.min(count, backlog) end
  local tokens = level(key, budget, capacity, now)
  if tokens < need then return {2, wait_for(tokens, need, budget), 1} end
  spend(key, tokens, count, budget, capacity, now)
end
local suffix = ''
if history_size > 0 then suffix = append(appended_key, history_key, position_key, payload, history_size, history_ttl, position_ttl) end
return {0, count, 0, suffix}
