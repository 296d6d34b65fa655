"""The store's Redis Functions library ``soe``: every server-side write of the store (docs/format.md).

Writers never send Lua. An admin loads this library (``FUNCTION LOAD REPLACE``, on every master of a
cluster; replicas get it by replication) with `soe redis functions load`, `soe redis acl`, or the
local server's setup; the writer calls it with ``FCALL`` / ``FCALL_RO``, and its ACL allows nothing
else of scripting (no EVAL/EVALSHA, SCRIPT or FUNCTION). A default user with every right (a local
development server) loads it itself on first use.

Functions (keys first, then arguments, as FCALL takes them):

* ``soe_upsert`` KEYS = bucket hashes (one slot on a cluster); ARGV[1] = users per key "c1 c2 ...",
  then key by key the user id / value pairs: the conditional upsert (a value is replaced only by an
  equal-or-newer as_of). Every value is checked first (format version 1; the record kind its key
  holds: ``:v:`` vectors, ``:n:`` neighbour lists, ``:p:`` recent positives; the length its header
  implies; dim <= max_dim, k <= max_neighbours or max_positives): one bad value refuses the whole
  call before anything is written. Returns {written, unchanged, stale}.
* ``soe_switch`` KEYS[1] = pointer, ARGV = new current, time: previous <- current, current <- new;
  a name that is not a valid model version never becomes previous, and an invalid previous is removed
  (a switch repairs a pointer someone filled with junk).
* ``soe_swap`` KEYS[1] = pointer, ARGV[1] = time: swap current and previous (rollback).
* ``soe_info`` (read-only, no keys): library version and the limits it was loaded with.

The limits are part of the loaded code (`library_source`), so only the admin who loads the library
chooses them; the Python side checks the same rules before sending (`store.base.check_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LIBRARY = "soe"
LIBRARY_VERSION = 1  # bump on any change of the functions' names, arguments or behaviour
UPSERT, SWITCH, SWAP, INFO = "soe_upsert", "soe_switch", "soe_swap", "soe_info"


@dataclass(frozen=True)
class Limits:
    """The largest values the store accepts (redis.max_dim / max_neighbours / max_positives)."""

    max_dim: int = 2048  # vector dim
    max_neighbours: int = 1000  # entries of a neighbour list
    max_positives: int = 1000  # entries of a recent-positives list

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits of a `RedisSettings` section."""
        return cls(int(settings.max_dim), int(settings.max_neighbours), int(settings.max_positives))


_LIBRARY = r"""#!lua name=soe
-- SoE store functions (store/functions.py, docs/format.md). Library version @VERSION@.
local VERSION = @VERSION@
local MAX_DIM, MAX_NEIGHBOURS, MAX_POSITIVES = @MAX_DIM@, @MAX_NEIGHBOURS@, @MAX_POSITIVES@

local function valid_name(s)
  return type(s) == 'string' and #s <= 128 and string.match(s, '^[%w_][%w%._%-]*$') ~= nil
         and string.find(s, '..', 1, true) == nil
end

local function as_of(v)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(v, 5, 12)
  return ((((((b8 * 256 + b7) * 256 + b6) * 256 + b5) * 256 + b4) * 256 + b3) * 256 + b2) * 256 + b1
end

-- nil when value v may be stored under a key holding records of kind letter r ('v', 'n', 'p')
local function check_value(r, v)
  if #v < 16 then return 'is shorter than the 16-byte header' end
  local version, kind, n0, n1 = string.byte(v, 1, 4)
  if version ~= 1 then return 'has format version ' .. version .. ' (expected 1)' end
  local n, want = n0 + 256 * n1, nil
  if r == 'v' then
    if kind == 1 then want = 16 + 2 * n elseif kind == 2 then want = 16 + 4 * n
    elseif kind == 3 then want = 20 + n
    else return 'has kind ' .. kind .. ', not a vector' end
    if n < 1 or n > MAX_DIM then return 'has dim ' .. n .. ', outside 1..' .. MAX_DIM end
  else
    if kind ~= 16 then return 'has kind ' .. kind .. ', not a list' end
    local max = MAX_NEIGHBOURS
    if r == 'p' then max = MAX_POSITIVES end
    if n > max then return 'holds ' .. n .. ' entries, over the limit of ' .. max end
    want = 16 + 12 * n
  end
  if #v ~= want then return 'is ' .. #v .. ' bytes, its header implies ' .. want end
  return nil
end

local function upsert(keys, args)
  local counts, sum = {}, 0
  for x in string.gmatch(args[1] or '', '%d+') do
    counts[#counts + 1] = tonumber(x); sum = sum + counts[#counts]
  end
  if #counts ~= #keys then
    return redis.error_reply('ERR soe upsert: ' .. #keys .. ' keys but ' .. #counts .. ' counts')
  end
  if 2 * sum ~= #args - 1 then
    return redis.error_reply('ERR soe upsert: counts add up to ' .. sum .. ' users, got ' .. (#args - 1)
                             .. ' id/value arguments')
  end
  local p = 2
  for k = 1, #keys do
    local r = string.match(keys[k], '^[^:]+:([vnp]):')
    if not r then
      return redis.error_reply('ERR soe upsert: key ' .. keys[k] .. ' is not a record bucket of the store')
    end
    for j = 0, counts[k] - 1 do
      local id, v = args[p + 2 * j], args[p + 2 * j + 1]
      if #id > 20 or not string.match(id, '^%-?%d+$') then
        return redis.error_reply('ERR soe upsert: field ' .. string.sub(id, 1, 24) .. ' is not a user id')
      end
      local bad = check_value(r, v)
      if bad then return redis.error_reply('ERR soe upsert: value of user ' .. id .. ' ' .. bad) end
    end
    p = p + 2 * counts[k]
  end
  local written, same, stale = 0, 0, 0
  p = 2
  for k = 1, #keys do
    local c, kids = counts[k], {}
    for j = 1, c do kids[j] = args[p + 2 * j - 2] end
    local old = redis.call('HMGET', keys[k], unpack(kids))
    local out = nil
    for j = 1, c do
      local o, v = old[j], args[p + 2 * j - 1]
      if o then
        if not out then
          out = {}
          for i = 1, j - 1 do out[2 * i - 1] = kids[i]; out[2 * i] = args[p + 2 * i - 1] end
        end
        if o == v then same = same + 1
        elseif #o >= 16 and as_of(o) > as_of(v) then stale = stale + 1
        else out[#out + 1] = kids[j]; out[#out + 1] = v; written = written + 1 end
      elseif out then
        out[#out + 1] = kids[j]; out[#out + 1] = v; written = written + 1
      else
        written = written + 1
      end
    end
    if c > 0 and not out then redis.call('HSET', keys[k], unpack(args, p, p + 2 * c - 1))
    elseif out and #out > 0 then redis.call('HSET', keys[k], unpack(out)) end
    p = p + 2 * c
  end
  return {written, same, stale}
end

local function switch(keys, args)
  if not valid_name(args[1]) then
    return redis.error_reply('ERR soe: the new current model is not a valid model version')
  end
  local cur = redis.call('HGET', keys[1], 'current')
  if cur ~= args[1] then
    if valid_name(cur) then redis.call('HSET', keys[1], 'previous', cur) end
    redis.call('HSET', keys[1], 'current', args[1], 'switched_at', args[2])
  end
  local prev = redis.call('HGET', keys[1], 'previous')
  if prev and not valid_name(prev) then redis.call('HDEL', keys[1], 'previous') end
  return redis.call('HGETALL', keys[1])
end

local function swap(keys, args)
  local cur = redis.call('HGET', keys[1], 'current')
  local prev = redis.call('HGET', keys[1], 'previous')
  if not (cur and prev) then return redis.error_reply('ERR soe: no previous model to roll back to') end
  redis.call('HSET', keys[1], 'current', prev, 'previous', cur, 'switched_at', args[1])
  return redis.call('HGETALL', keys[1])
end

local function info(keys, args)
  return {'library', 'soe', 'version', tostring(VERSION), 'max_dim', tostring(MAX_DIM),
          'max_neighbours', tostring(MAX_NEIGHBOURS), 'max_positives', tostring(MAX_POSITIVES)}
end

redis.register_function('soe_upsert', upsert)
redis.register_function('soe_switch', switch)
redis.register_function('soe_swap', swap)
redis.register_function{function_name = 'soe_info', callback = info, flags = {'no-writes'}}
"""


def library_source(limits: Limits = Limits()) -> str:
    """The library's Lua code with ``limits`` compiled in (what FUNCTION LOAD takes)."""
    for name in ("max_dim", "max_neighbours", "max_positives"):
        value = getattr(limits, name)
        if not isinstance(value, int) or not 1 <= value <= 65535:
            raise ValueError(f"{name} must be an integer in 1..65535, got {value!r}")
    return (
        _LIBRARY.replace("@VERSION@", str(LIBRARY_VERSION))
        .replace("@MAX_DIM@", str(limits.max_dim))
        .replace("@MAX_NEIGHBOURS@", str(limits.max_neighbours))
        .replace("@MAX_POSITIVES@", str(limits.max_positives))
    )


def function_missing(exc: BaseException) -> bool:
    """Whether a Redis error says that a function of the library is not loaded on the node."""
    return "Function not found" in str(exc)


def node_clients(client: Any) -> list[tuple[str, Any]]:
    """("host:port", redis.Redis) of every node that needs the library: the node itself, or every
    primary of a cluster (replicas receive functions by replication)."""
    if hasattr(client, "get_primaries"):
        return [(f"{n.host}:{n.port}", client.get_redis_connection(n)) for n in client.get_primaries()]
    kw = client.connection_pool.connection_kwargs
    return [(f"{kw.get('host')}:{kw.get('port')}", client)]


def info(node: Any) -> dict[str, str] | None:
    """What ``soe_info`` reports on one node (None when the library is not loaded there)."""
    import redis

    try:
        flat = node.execute_command("FCALL_RO", INFO, 0)
    except redis.exceptions.ResponseError as exc:
        if function_missing(exc):
            return None
        raise
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return dict(zip(text[0::2], text[1::2]))


def _load_on(name: str, node: Any, src: str) -> str:
    import redis

    try:
        node.execute_command("FUNCTION", "LOAD", "REPLACE", src)
    except redis.exceptions.NoPermissionError:
        raise PermissionError(
            f"the '{LIBRARY}' function library (version {LIBRARY_VERSION}) is not loaded "
            f"on {name} and this Redis user may not load it: an admin runs "
            "`soe redis functions load` (or `soe redis acl`)"
        ) from None
    return name


def load(client: Any, limits: Limits = Limits()) -> list[str]:
    """FUNCTION LOAD REPLACE the library on every node of ``client`` (needs an admin); the nodes."""
    src = library_source(limits)
    return [_load_on(name, node, src) for name, node in node_clients(client)]


def ensure(client: Any, limits: Limits = Limits()) -> list[str]:
    """Load the library on every node that lacks it or holds another version; the nodes loaded.

    A node that holds this version keeps the limits its admin loaded. Loading needs the right to
    (an admin or a development server's default user); without it a PermissionError says what to run.
    """
    src = library_source(limits)
    return [
        _load_on(name, node, src)
        for name, node in node_clients(client)
        if (info(node) or {}).get("version") != str(LIBRARY_VERSION)
    ]
