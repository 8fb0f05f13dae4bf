#!lua name=prefetch_v2
-- Version-guarded writes for the prefetch cache (loaded by prefetch/src/guard/mod.rs).
--
-- A version is stored as "hi:lo:ord" in `__v` (the commit position's high
-- and low 32 bits and the change's place in its transaction), and as 30
-- decimal digits (the commit's 20, the ordinal's 10, zero-padded) at the
-- start of `__h` and of each write's `__h` argument. The hot path, a live
-- write over a record this library wrote, compares those digit strings
-- with Lua's `<`: one HGET and no parsing, where parsing "hi:lo:ord"
-- costs a pattern match and three strtod calls (about as much as a
-- redis.call). Lua compares strings by the server's locale (strcoll), so
-- this path runs only once the library has checked that the locale
-- orders the ten digits as numbers (every glibc locale does; no locale
-- contracts digits); else, and on every other path, versions are compared
-- as two numbers below 2^48 parsed from "hi:lo:ord", never as strings (Lua
-- numbers are doubles, exact only below 2^53).
--
-- Keys of one write come in pairs: the record's hash and its tombstone key
-- (the record's key again when the tombstone lives inside the hash).
-- KEYS[1] is always the cache's state hash (source, pos, floor, loading,
-- mark), or on a Redis Cluster its copy in the slot of the call's records
-- (source, floor, mark);
-- every call first checks that it still names the caller's source, so a
-- Redis that lost its data is noticed by the first write ("PFLOST").
--
-- The snapshot window. A record's version lives in its hash, so whatever
-- removes the hash (an invalidate, a clear, a DEL from outside, its TTL,
-- eviction) removes the version with it. A snapshot write then found
-- nothing to compare with and applied, although a live change newer than
-- the snapshot had reached the key before it was removed: an old value
-- stayed in the cache. So, while a snapshot is being taken and written
-- (a load, a re-prefetch, a reconciliation's repair), the state carries a
-- `mark` (a deadline in Redis's own milliseconds, renewed by the loader),
-- and every write the guard applies meanwhile also records its version in
-- the window's log (a hash beside the state, in the same slot, field =
-- data key). A write that finds no version in the key nor a tombstone
-- compares with the log instead. The mark is set before the snapshot is
-- taken, so every change newer than the snapshot is applied inside the
-- window and logged.

-- "hi:lo:ord" as its two numbers { commit >> 16, (commit & 0xffff) << 32 | ord }.
local function parse(s)
  if type(s) ~= 'string' then return nil end
  local a, b, c = string.match(s, '^(%d+):(%d+):(%d+)$')
  if not a then return nil end
  local lo = tonumber(b)
  return { tonumber(a) * 65536 + math.floor(lo / 65536), (lo % 65536) * 4294967296 + tonumber(c) }
end

-- a > b, each as its two numbers; nothing (nil) is older than everything.
local function newer2(a1, a2, b1, b2)
  if b1 == nil then return true end
  if a1 ~= b1 then return a1 > b1 end
  return a2 > b2
end

-- x > y for parsed versions (tables).
local function newer(x, y)
  if y == nil then return true end
  return newer2(x[1], x[2], y[1], y[2])
end

-- Whether the server's collation orders strings of decimal digits of one
-- length as their numbers (a proper prefix first): checked at the first
-- call after each load of the library.
local digits_collate_checked = nil
local function digits_collate()
  if digits_collate_checked == nil then
    local ok = ('09' < '10') and ('1' < '10') and ('99' < '990') and not ('10' < '09')
    local d = '0123456789'
    for i = 1, 9 do
      ok = ok and string.sub(d, i, i) < string.sub(d, i + 1, i + 1)
    end
    digits_collate_checked = ok
  end
  return digits_collate_checked
end

-- "hi:lo:ord" as its 30 digits (hi * 2^32 + lo in 20, ord in 10), exactly:
-- a long division by 10^10 in 16-bit steps keeps every number below 2^53.
local function digits_of(s)
  if type(s) ~= 'string' then return nil end
  local a, b, c = string.match(s, '^(%d+):(%d+):(%d+)$')
  if not a then return nil end
  local hi, lo = tonumber(a), tonumber(b)
  local q, r = 0, 0
  for _, chunk in ipairs({ math.floor(hi / 65536), hi % 65536, math.floor(lo / 65536), lo % 65536 }) do
    local cur = r * 65536 + chunk
    local d = math.floor(cur / 1e10)
    r = cur - d * 1e10
    if r < 0 then d, r = d - 1, r + 1e10 elseif r >= 1e10 then d, r = d + 1, r - 1e10 end
    q = q * 65536 + d
  end
  return string.format('%010.0f%010.0f%010.0f', q, r, tonumber(c))
end

-- The names hash in a stored `__h` (after the version's 30 digits and the
-- content hash; or after the content hash alone, as written before).
local function names_in(h)
  if type(h) ~= 'string' then return nil end
  if #h == 62 then return string.sub(h, 47, 62) end
  return string.sub(h, 17, 32)
end

-- A hash field, or nil when the key is missing or not a hash (someone
-- wrote it outside the pipeline: it has no version and is replaced).
local function hget(key, field)
  local r = redis.pcall('HGET', key, field)
  if type(r) ~= 'string' then return nil end
  return r
end

-- What a record holds: the newest version stored for it (its hash's, or
-- its tombstone's) as two numbers, the names part of the hash's `__h`, and
-- whether a tombstone key exists. A hash with a version is always newer
-- than any tombstone beside it (a delete removes the hash; a write over a
-- tombstone removes it), so the tombstone is read only when the hash has
-- no version.
local function stored(data, tomb, p)
  local r = redis.pcall('HMGET', data, '__v', '__h')
  if type(r) ~= 'table' then return nil, nil, nil, false end
  local v = p(r[1])
  if v ~= nil or tomb == data then
    if v == nil then return nil, nil, nil, false end
    return v[1], v[2], names_in(r[2]), false
  end
  local t = p(redis.pcall('GET', tomb))
  if t == nil then return nil, nil, nil, false end
  return t[1], t[2], nil, true
end

-- A JSON record is a string (the document); its version and `__h` live in
-- its tombstone key, as "<version> <__h>" while it exists and "<version>"
-- once deleted (the tombstone a hash record's delete leaves too). Both
-- keys carry the record's TTL. Ops 'j' (upsert: one pair, the document)
-- and 'x' (delete) write such records.
local function sidecar(tomb, p)
  local t = redis.pcall('GET', tomb)
  if type(t) ~= 'string' then return nil, nil end
  local vs, h = string.match(t, '^(%S+) ?(.*)$')
  if h == '' then h = nil end
  return p(vs), h
end

-- The floor (no write older than it applies) when the state hash names
-- `source`, and the stored position (a string, or false); nil when the
-- state is gone or belongs to another source.
local function floor_of(meta, source, p)
  local s = redis.call('HMGET', meta, 'source', 'floor', 'pos', 'mark')
  if s[1] ~= source then return nil end
  return (p or parse)(s[2]) or { 0, 0 }, s[3], s[4], s[2] or '0:0:0'
end

-- Redis's clock in milliseconds (frozen for the call's duration).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a snapshot window is open at `meta`, given its `mark` field; a
-- mark past its deadline is removed (its loader is gone).
local function window_open(meta, mark)
  if not mark then return false end
  if tonumber(mark) > now_ms() then return true end
  redis.call('HDEL', meta, 'mark')
  return false
end

-- Raises `field` to `vs` if that is newer than `current` (its stored value).
local function raise(meta, field, vs, current, p)
  p = p or parse
  local v = p(vs)
  if v and newer(v, p(current)) then
    redis.call('HSET', meta, field, vs)
  end
end

local function advance(meta, field, vs)
  raise(meta, field, vs, redis.call('HGET', meta, field))
end

-- A parse that remembers: within one call the same version string often
-- comes back (a write's version is also the position; the position stored
-- is often the version a record holds), and a parse costs about as much
-- as a redis.call.
local function memo_parse()
  local seen = {}
  return function(s)
    if type(s) ~= 'string' then return nil end
    local v = seen[s]
    if v == nil then
      v = parse(s) or false
      seen[s] = v
    end
    return v or nil
  end
end

local function lost()
  return redis.error_reply('PFLOST the cache state for this source is gone')
end

local function bury(data, tomb, vs, tomb_ttl)
  redis.call('DEL', data)
  if tomb ~= data then
    redis.call('SET', tomb, vs, 'PX', tomb_ttl)
  else
    redis.call('HSET', data, '__v', vs, '__del', '1')
    redis.call('PEXPIRE', data, tomb_ttl)
  end
end

-- KEYS: the state, the window's log, then a (data, tombstone) pair per
-- write. A snapshot write needs an open window (PFWINDOW otherwise: its
-- loader's window lapsed, and it must start over).
-- ARGV: source, mode ('live' | 'snapshot' | 'repair'), ttl s, tombstone ttl ms,
-- position ('' for none), then per write: op (a hash record's upsert: the
-- 16 hex digits of its field names' hash; 'd' its delete; 'j' | 'x' a JSON
-- record's upsert | delete), version ("hi:lo:ord"), the version's 30
-- digits, [pf2_apply_t only: the write's own ttl s,] and for an upsert
-- `__h` (those digits, then the content and names hashes: 62 characters),
-- pair count n and n name/value pairs (a hash record's `__v` and `__h` are
-- added here: every argument costs the call's conversions about as much
-- as a small command's own work).
-- Returns the places (from 1) of the writes not applied (stale): an empty
-- array when all were. A live write must be newer than what is stored; a
-- snapshot write may also rewrite its own version (repairing a hash
-- changed outside the pipeline). A repair write applies only where
-- nothing is stored (a lost key: no record, no tombstone; for a JSON
-- record, no document and no delete in its tombstone key, whose version
-- must be older). Nothing older than the floor applies.
--
-- Every redis.call costs about as much as the command itself, so a live
-- update of a record with the same field names is three: HGET `__h`, HSET
-- (which replaces every field) and EXPIRE. A changed set of names needs
-- the DEL first, and so does a snapshot write, which also removes fields
-- someone else added to the hash.

-- A hash write over a record this library wrote (its `__h` starts with
-- its version's digits), decided by comparing digit strings: the hot
-- path. Returns nil when it cannot decide (no such `__h`), else whether
-- the write goes (newer; for a snapshot, or as new) and whether the field
-- names are unchanged. The write's 30 digits against the stored `__h`:
-- equal versions make them a proper prefix, which is smaller.
local function fast(data, op, vk, snapshot)
  local cur = redis.pcall('HGET', data, '__h')
  if type(cur) ~= 'string' or #cur ~= 62 then return nil end
  if vk > cur or (snapshot and string.find(cur, vk, 1, true) == 1) then
    return true, string.find(cur, op, 47, true) == 47
  end
  return false, false
end

local function apply(keys, args, own_ttl)
  local p = memo_parse()
  local meta, log = keys[1], keys[2]
  local floor, pos, mark, floor_text = floor_of(meta, args[1], p)
  if floor == nil then return lost() end
  local snapshot = args[2] == 'snapshot'
  local repair = args[2] == 'repair'
  local ttl = args[3]
  local tomb_ttl = args[4]
  local logging = window_open(meta, mark)
  if snapshot and not (logging and redis.call('HEXISTS', log, '__open') == 1) then
    return redis.error_reply('PFWINDOW no snapshot window is open for this write')
  end
  -- The floor's digits, for the hot path.
  local floor_digits = not repair and digits_collate() and digits_of(floor_text)
  local out = {}
  local a, k, w, nargs = 6, 3, 0, #args
  while a <= nargs do
    w = w + 1
    local op, vs, vk = args[a], args[a + 1], args[a + 2]
    -- The write's TTL, its `__h`, its pair count, and where its pairs start.
    local wttl, h, n, first = ttl, nil, 0, a + 3
    if own_ttl then wttl, first = args[first], first + 1 end
    if op ~= 'd' and op ~= 'x' then
      h, n, first = args[first], tonumber(args[first + 1]), first + 2
    end
    local data, tomb = keys[k], keys[k + 1]
    local hash_upsert = #op == 16
    local go, same_names, tombed
    if floor_digits and (hash_upsert or op == 'd') and #vk == 30 then
      if vk < floor_digits then
        go = false
      else
        go, same_names = fast(data, op, vk, snapshot)
      end
    end
    if go == nil then
      go = false
      local v = p(vs)
      if v and not newer(floor, v) then
        local json = op == 'j' or op == 'x'
        local c1, c2, cur_names
        if json then
          -- (cur_names: the document's `__h`, nil once deleted.)
          local cur
          cur, cur_names = sidecar(tomb, p)
          if cur then c1, c2 = cur[1], cur[2] end
        else
          c1, c2, cur_names, tombed = stored(data, tomb, p)
        end
        if repair then
          if json then
            go = redis.call('EXISTS', data) == 0
              and (c1 == nil or (cur_names ~= nil and newer2(v[1], v[2], c1, c2)))
          else
            go = c1 == nil
          end
        else
          if c1 == nil and logging then
            -- Removed since a write inside the window: that write's version.
            local l = p(redis.call('HGET', log, data))
            if l then c1, c2 = l[1], l[2] end
          end
          go = newer2(v[1], v[2], c1, c2) or (snapshot and not newer2(c1, c2, v[1], v[2]))
        end
        same_names = c1 ~= nil and cur_names == op
      end
    end
    if go then
      -- Live writes only: a snapshot's own rows are all older than
      -- anything a later write in the window could need to know of.
      if logging and not snapshot then redis.call('HSET', log, data, vs) end
      if hash_upsert then
        if snapshot or not same_names then redis.call('DEL', data) end
        local last = first - 1 + 2 * n
        if n <= 500 then
          redis.call('HSET', data, '__v', vs, '__h', h, unpack(args, first, last))
        else
          -- unpack has a stack limit: at most 500 pairs per HSET.
          redis.call('HSET', data, '__v', vs, '__h', h)
          local i = first
          while i <= last do
            local j = math.min(i + 999, last)
            redis.call('HSET', data, unpack(args, i, j))
            i = j + 1
          end
        end
        redis.call('EXPIRE', data, wttl)
        if tombed then redis.call('DEL', tomb) end
      elseif op == 'j' then
        redis.call('SET', data, args[first + 1], 'EX', wttl)
        redis.call('SET', tomb, vs .. ' ' .. h, 'EX', wttl)
      else
        bury(data, tomb, vs, tomb_ttl)
      end
    else
      out[#out + 1] = w
    end
    a = first + 2 * n
    k = k + 2
  end
  if args[5] ~= '' then raise(meta, 'pos', args[5], pos, p) end
  return out
end

-- ARGV: source, snapshot version, tombstone ttl ms. Removes each listed
-- record whose version is older than the snapshot (so the snapshot did not
-- contain it), leaving a tombstone at the snapshot's version.
local function sweep(keys, args)
  if floor_of(keys[1], args[1]) == nil then return lost() end
  local c = parse(args[2])
  local tomb_ttl = args[3]
  local swept = 0
  for k = 2, #keys, 2 do
    local data, tomb = keys[k], keys[k + 1]
    local kind = redis.call('TYPE', data)['ok']
    if kind == 'string' then
      -- A JSON record: its version is in its tombstone key.
      local v = sidecar(tomb, parse)
      if v == nil or newer(c, v) then
        bury(data, tomb, args[2], tomb_ttl)
        swept = swept + 1
      end
    elseif kind ~= 'none' and hget(data, '__del') == nil then
      local v = parse(hget(data, '__v'))
      if v == nil or newer(c, v) then
        bury(data, tomb, args[2], tomb_ttl)
        swept = swept + 1
      end
    end
  end
  return swept
end

-- ARGV: source, snapshot version, and 'slot' for a cluster slot's copy of
-- the state. Starts a load: claims the state for `source` (starting afresh
-- if it named another), raises the floor to the snapshot and, in the main
-- state, marks the load as under way.
local function begin(keys, args)
  local meta = keys[1]
  if redis.call('HGET', meta, 'source') ~= args[1] then
    -- Start afresh, but keep the snapshot window this load opened.
    local mark = redis.call('HGET', meta, 'mark')
    redis.call('DEL', meta)
    redis.call('HSET', meta, 'source', args[1])
    if mark then redis.call('HSET', meta, 'mark', mark) end
  end
  advance(meta, 'floor', args[2])
  if args[3] ~= 'slot' then
    redis.call('HSET', meta, 'loading', args[2])
  end
  return 1
end

-- ARGV: source, snapshot version. Ends a load: the position reaches the
-- snapshot and the load mark goes.
local function finish(keys, args)
  local meta = keys[1]
  local floor, pos = floor_of(meta, args[1])
  if floor == nil then return lost() end
  raise(meta, 'pos', args[2], pos)
  if redis.call('HGET', meta, 'loading') == args[2] then
    redis.call('HDEL', meta, 'loading')
  end
  return 1
end

-- ARGV: source, version. A TRUNCATE at `version`: nothing older than it
-- applies any more, so a change that committed before the truncate but
-- arrives after it (another partition, a claimed entry) cannot bring a row
-- back.
local function raise_floor(keys, args)
  if floor_of(keys[1], args[1]) == nil then return lost() end
  advance(keys[1], 'floor', args[2])
  return 1
end

-- KEYS: the state, the window's log. ARGV: 'open' | 'renew', lease ms.
-- Opens (or renews) a snapshot window: the mark's deadline becomes at
-- least now + lease, and the log expires with it. 'open' counts one more
-- open window in the log (several loaders may overlap). Works whether or
-- not the state names a source yet (a load that is about to claim it).
-- Returns the deadline.
local function window(keys, args)
  local meta, log = keys[1], keys[2]
  local deadline = now_ms() + tonumber(args[2])
  local mark = tonumber(redis.call('HGET', meta, 'mark'))
  if mark == nil or mark < deadline then
    redis.call('HSET', meta, 'mark', deadline)
  else
    deadline = mark
  end
  if args[1] == 'open' then
    redis.call('HINCRBY', log, '__open', 1)
  elseif redis.call('HEXISTS', log, '__open') == 0 then
    -- Lost (evicted, deleted): writes logged so far are gone with it, and
    -- the snapshot writes of this window will be refused.
    return redis.error_reply('PFWINDOW the snapshot window\'s log is gone')
  end
  redis.call('PEXPIREAT', log, deadline)
  return deadline
end

-- KEYS: the state, the window's log. Closes one window; when none is left
-- open, the mark and the log go, and writes stop logging.
local function window_close(keys, args)
  local meta, log = keys[1], keys[2]
  local left = 0
  if redis.call('HEXISTS', log, '__open') == 1 then
    left = redis.call('HINCRBY', log, '__open', -1)
  end
  if left <= 0 then
    redis.call('DEL', log)
    redis.call('HDEL', meta, 'mark')
  end
  return left
end

redis.register_function('pf2_apply', function(keys, args) return apply(keys, args, false) end)
-- The same, each write with a TTL of its own (tables with TTLs of their own).
redis.register_function('pf2_apply_t', function(keys, args) return apply(keys, args, true) end)
redis.register_function('pf2_window', window)
redis.register_function('pf2_close', window_close)
redis.register_function('pf2_sweep', sweep)
redis.register_function('pf2_begin', begin)
redis.register_function('pf2_finish', finish)
redis.register_function('pf2_floor', raise_floor)
