"""The server-side Lua scripts of the store (run with EVALSHA by the writer; readers never run scripts).

* `UPSERT_LUA`, the conditional upsert: a stored value is replaced only by one with an equal-or-newer
  as_of (bytes 5-12 of every value, see store.format / docs/format.md). One call takes several bucket
  hashes (KEYS, all of one hash tag on a cluster) and, key by key, the users' id/value pairs.
  Malformed calls are refused before anything is written. Returns {written, unchanged, stale}.
* `SWITCH_LUA` / `SWAP_LUA`: the current-model pointer, one hash, changed atomically.
"""

UPSERT_LUA = """
-- KEYS: bucket hashes. ARGV[1]: users per key "c1 c2 ... cm"; then, key by key, user id / value pairs
-- (exactly HSET's argument list). A value is written unless the stored one is equal or has a newer as_of.
local counts, sum = {}, 0
for x in string.gmatch(ARGV[1], '%d+') do counts[#counts + 1] = tonumber(x); sum = sum + counts[#counts] end
if #counts ~= #KEYS then
  return redis.error_reply('ERR soe upsert: ' .. #KEYS .. ' keys but ' .. #counts .. ' counts')
end
if 2 * sum ~= #ARGV - 1 then
  return redis.error_reply('ERR soe upsert: counts add up to ' .. sum .. ' users, got ' .. (#ARGV - 1)
                           .. ' id/value arguments')
end
for i = 3, #ARGV, 2 do
  if #ARGV[i] < 16 then
    return redis.error_reply('ERR soe upsert: value of user ' .. ARGV[i - 1]
                             .. ' is shorter than the 16-byte header')
  end
end
local function as_of(v)
  if #v < 16 then return nil end
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(v, 5, 12)
  return ((((((b8 * 256 + b7) * 256 + b6) * 256 + b5) * 256 + b4) * 256 + b3) * 256 + b2) * 256 + b1
end
local p, written, same, stale = 2, 0, 0, 0
for k = 1, #KEYS do
  local c, kids = counts[k], {}
  for j = 1, c do kids[j] = ARGV[p + 2 * j - 2] end
  local old = redis.call('HMGET', KEYS[k], unpack(kids))
  local args = nil
  for j = 1, c do
    local o = old[j]
    if o then
      if not args then
        args = {}
        for i = 1, j - 1 do args[2 * i - 1] = kids[i]; args[2 * i] = ARGV[p + 2 * i - 1] end
      end
      local v = ARGV[p + 2 * j - 1]
      local t_new = as_of(v)
      if o == v then same = same + 1
      elseif (as_of(o) or -1) > t_new then stale = stale + 1
      else args[#args + 1] = kids[j]; args[#args + 1] = v; written = written + 1 end
    elseif args then
      args[#args + 1] = kids[j]; args[#args + 1] = ARGV[p + 2 * j - 1]; written = written + 1
    else
      written = written + 1
    end
  end
  if not args then redis.call('HSET', KEYS[k], unpack(ARGV, p, p + 2 * c - 1))
  elseif #args > 0 then redis.call('HSET', KEYS[k], unpack(args)) end
  p = p + 2 * c
end
return {written, same, stale}
"""

SWITCH_LUA = """
-- KEYS[1] pointer hash; ARGV[1] new current; ARGV[2] time. previous <- current, current <- new.
local cur = redis.call('HGET', KEYS[1], 'current')
if cur ~= ARGV[1] then
  if cur then redis.call('HSET', KEYS[1], 'previous', cur) end
  redis.call('HSET', KEYS[1], 'current', ARGV[1], 'switched_at', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

SWAP_LUA = """
-- KEYS[1] pointer hash; ARGV[1] time. Swap current and previous.
local cur = redis.call('HGET', KEYS[1], 'current')
local prev = redis.call('HGET', KEYS[1], 'previous')
if not (cur and prev) then return redis.error_reply('ERR soe: no previous model to roll back to') end
redis.call('HSET', KEYS[1], 'current', prev, 'previous', cur, 'switched_at', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
