#include "registry_service/store/redis_store.h"

#include <openssl/evp.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace tether::registry {
namespace {

// Shared by every script. ARGV[1..13] is the common header (see RedisStore::Run; ARGV[11] is
// the calling replica's id, ARGV[12] the node retention, ARGV[13] the byte bound of remembered
// outcomes); a script's own arguments are A(1), A(2), ... Every script returns
// {result, effects}: result[1] is 'OK' or an absl status code number with result[2] its message;
// effects is a list of
//   {'P', revision, node, kind, reason, conn, edge, generation, time}       presence event
//   {'S', invoke, node, conn, edge, gen, command, params, key, remember, started, deadline,
//         timeout, code, payload, node_error_code, message}                  settled invoke
//   {'E', kind, edge, conn, node, reason, invoke, grace_ms}                  edge command
// in the order the decision made them. Numbers travel as decimal strings.
constexpr char kPrelude[] = R"lua(
local P = ARGV[1]
local NOWS = ARGV[2]
local NOW = tonumber(ARGV[2])
local TTL = tonumber(ARGV[3])
local GRACE = tonumber(ARGV[4])
local HISTORY = tonumber(ARGV[5])
local IDEM = tonumber(ARGV[6])
local AUTO_ALL = ARGV[7] == '1'
local AUTO_LB = ARGV[8] == '1'
local MAXPAIR = tonumber(ARGV[9])
local PAIR_TTL = tonumber(ARGV[10])
local MAXPAY = 1048576
local ME = ARGV[11]
local RETAIN = tonumber(ARGV[12])
local MAXOUT = tonumber(ARGV[13])
local function A(i) return ARGV[13 + i] end
local NA = #ARGV - 13
local out = {}

local function I(x) return string.format('%d', x) end
local function enc(t)
  local b = {}
  for i = 1, #t do local s = t[i]; b[#b + 1] = #s .. ':' .. s end
  return table.concat(b)
end
local function dec(s)
  local t = {}
  if not s then return t end
  local pos = 1
  while pos <= #s do
    local c = string.find(s, ':', pos, true)
    local n = tonumber(string.sub(s, pos, c - 1))
    t[#t + 1] = string.sub(s, c + 1, c + n)
    pos = c + 1 + n
  end
  return t
end

-- Per-node keys: the node id is the hash tag.
local function NK(n, s) return P .. '{' .. n .. '}:' .. s end
local function node_key(n) return NK(n, 'node') end
local function conn_key(n, c) return NK(n, 'conn:' .. c) end
local function cpend_key(n, c) return NK(n, 'conn_pending:' .. c) end
local function nconns_key(n) return NK(n, 'conns') end
local function inv_key(n, i) return NK(n, 'invoke:' .. i) end
local function idem_key(n, k) return NK(n, 'inflight:' .. k) end
local function done_key(n, k) return NK(n, 'outcome:' .. k) end
local function dev_key(n) return NK(n, 'device') end
local function revoked_key(n) return NK(n, 'revoked') end
local function preq_key(n) return NK(n, 'pairing') end
-- Global keys.
local G_GEN = P .. 'generation'
local G_REV = P .. 'revision'
local G_PRESENCE = P .. 'presence'
local G_NODES = P .. 'nodes'
local G_DEVICES = P .. 'devices'
local G_CONNS = P .. 'conn_index'
local G_INVS = P .. 'invoke_index'
local G_DEADLINES = P .. 'invoke_deadlines'
local G_RETIRE = P .. 'retire_deadlines'
local G_OUTCOMES = P .. 'outcome_expiry'
local G_LEASES = P .. 'leases'
local G_LEASE_EXP = P .. 'lease_expiry'
local G_PAIRING = P .. 'pairing_index'
local G_PAIR_AGE = P .. 'pairing_created'
local function lease_conns_key(e) return P .. 'lease_conns:' .. e end
-- Routing between replicas (README, "Replicas"): edge -> id of the replica holding its stream;
-- each edge's outbox of messages in decision order, and how far its holder delivered it; each
-- replica's inbox of settlements for callers waiting on it.
local G_IDLE = P .. 'idle_nodes'  -- disconnected nodes by when (records pruned after RETAIN)
local G_OUT_BYTES = P .. 'outcome_bytes'  -- payload bytes of the remembered outcomes
-- What the bounds dropped (Store::Dropped): field -> count, across replicas.
local G_DROPS = P .. 'dropped'
local function dropped(what) redis.call('HINCRBY', G_DROPS, what, 1) end
-- Revocations remembered (node -> order), bounded; the newest generation granted before a
-- forgotten one: a resync never re-pairs a connection granted at or below it.
local G_REVOKED = P .. 'revocations'
local G_REVOKED_FLOOR = P .. 'revoked_floor'
local function unrevoke(n)
  redis.call('DEL', revoked_key(n))
  redis.call('ZREM', G_REVOKED, n)
end
-- Forgets a remembered outcome (its hash and its bytes); m = node .. '\0' .. key.
local function forget_outcome(m)
  redis.call('ZREM', P .. 'outcome_expiry', m)
  local z = string.find(m, '\0', 1, true)
  local dk = P .. '{' .. string.sub(m, 1, z - 1) .. '}:outcome:' .. string.sub(m, z + 1)
  local b = redis.call('HGET', dk, 'bytes')
  if b then redis.call('DECRBY', G_OUT_BYTES, b) end
  redis.call('DEL', dk)
end
local G_HOLDERS = P .. 'edge_holder'
local function outbox_key(e) return P .. 'outbox:{' .. e .. '}' end
local function outpos_key(e) return P .. 'outbox_pos:{' .. e .. '}' end
local function inbox_key(r) return P .. 'inbox:' .. r end
local function waiting_key(n, i) return NK(n, 'waiting:' .. i) end

local function err(code, msg) return {{code, msg}, out} end
local function ok(...) return {{'OK', ...}, out} end
-- 'OK', the arguments, then every item of `list` (unpack() fails beyond ~8000 items).
local function ok_list(list, ...)
  local r = {'OK', ...}
  for i = 1, #list do r[#r + 1] = list[i] end
  return {r, out}
end

local function publish(n, kind, reason, c, e, gen)
  local rev = I(redis.call('INCR', G_REV))
  local ev = {rev, n, kind, reason, c, e, gen, NOWS}
  redis.call('RPUSH', G_PRESENCE, enc(ev))
  local len = redis.call('LLEN', G_PRESENCE)
  if len > HISTORY then redis.call('LTRIM', G_PRESENCE, len - HISTORY, -1) end
  out[#out + 1] = {'P', rev, n, kind, reason, c, e, gen, NOWS}
end

-- Appends a message for edge `e` to its outbox while it has a lease (without one there is no
-- stream to deliver it on: the edge's resync repairs what it missed).
local function route(e, t, data)
  if not e or e == '' or redis.call('HEXISTS', G_LEASES, e) == 0 then return end
  redis.call('XADD', outbox_key(e), '*', 't', t, 'd', data)
end

local function tell(kind, e, c, n, reason, inv, grace)
  local m = {kind, e or '', c, n, reason, inv or '', grace or '0'}
  out[#out + 1] = {'E', m[1], m[2], m[3], m[4], m[5], m[6], m[7]}
  route(e, 'E', enc(m))
end

local function maybe_retire(n, c)
  local ck = conn_key(n, c)
  local h = redis.call('HMGET', ck, 'superseded', 'retire_sent', 'edge')
  if h[1] ~= '1' or h[2] == '1' or redis.call('SCARD', cpend_key(n, c)) > 0 then return end
  redis.call('HSET', ck, 'retire_sent', '1')
  redis.call('ZREM', G_RETIRE, c)
  tell('1', h[3], c, n, 'superseded')
end

local function supersede(n, c)
  local ck = conn_key(n, c)
  redis.call('HSET', ck, 'superseded', '1')
  if redis.call('SCARD', cpend_key(n, c)) == 0 then
    maybe_retire(n, c)
    return
  end
  local at = NOW + GRACE
  redis.call('HSET', ck, 'retire_at', I(at))
  redis.call('ZADD', G_RETIRE, I(at), c)
  tell('0', redis.call('HGET', ck, 'edge'), c, n, 'superseded', '', I(GRACE))
end

-- meta = {client, commands, public_key, remote_addr}
local function install_owner(n, c, e, gen, meta)
  local nk = node_key(n)
  local kind = '0'
  local owner = redis.call('HGET', nk, 'owner')
  if owner and owner ~= '' then
    if redis.call('EXISTS', conn_key(n, owner)) == 1 then supersede(n, owner) end
    kind = '1'
  end
  redis.call('HSET', nk, 'node', n, 'owner', c, 'edge', e, 'generation', gen, 'client', meta[1],
             'commands', meta[2], 'public_key', meta[3], 'remote_addr', meta[4],
             'connected_at', NOWS, 'last_seen', NOWS)
  redis.call('ZADD', G_NODES, '0', n)
  redis.call('ZREM', G_IDLE, n)
  publish(n, kind, '', c, e, gen)
end

local function new_conn(n, c, e, gen)
  redis.call('HSET', conn_key(n, c), 'node', n, 'edge', e, 'generation', gen, 'superseded', '0',
             'retire_sent', '0', 'retire_at', '0')
  redis.call('HSET', G_CONNS, c, n)
  redis.call('SADD', nconns_key(n), c)
  redis.call('SADD', lease_conns_key(e), c)
end

local DISPATCH_FIELDS = {'conn', 'edge', 'generation', 'command', 'params', 'key', 'remember',
                         'started', 'deadline', 'timeout'}
-- {invoke, node, conn, edge, gen, command, params, key, remember, started, deadline, timeout}
local function dispatch_of(n, inv)
  local d = redis.call('HMGET', inv_key(n, inv), unpack(DISPATCH_FIELDS))
  local r = {inv, n}
  for i = 1, #DISPATCH_FIELDS do r[#r + 1] = d[i] or '' end
  return r
end

-- o = {code, payload, node_error_code, message}
local function finish(inv, o)
  local n = redis.call('HGET', G_INVS, inv)
  if not n then return false end
  local d = dispatch_of(n, inv)
  redis.call('DEL', inv_key(n, inv))
  redis.call('HDEL', G_INVS, inv)
  redis.call('ZREM', G_DEADLINES, inv)
  redis.call('DEL', idem_key(n, d[8]))
  local answered = o[1] == '0' or o[1] == '1'
  if d[9] == '1' and answered and #o[2] <= MAXPAY then
    local exp = I(NOW + IDEM)
    local m = n .. '\0' .. d[8]
    if redis.call('EXISTS', done_key(n, d[8])) == 1 then forget_outcome(m) end
    redis.call('HSET', done_key(n, d[8]), 'invoke', inv, 'code', o[1], 'payload', o[2],
               'node_error_code', o[3], 'message', o[4], 'conn', d[3], 'generation', d[5],
               'expires', exp, 'bytes', I(#o[2]))
    redis.call('ZADD', G_OUTCOMES, exp, m)
    -- Bounded by bytes too, not only by time: the oldest outcomes are forgotten first.
    local total = redis.call('INCRBY', G_OUT_BYTES, #o[2])
    while total > MAXOUT do
      local oldest = redis.call('ZRANGE', G_OUTCOMES, 0, 0)
      if #oldest == 0 then break end
      forget_outcome(oldest[1])
      dropped('outcomes_forgotten')
      total = tonumber(redis.call('GET', G_OUT_BYTES) or '0')
    end
  end
  if redis.call('EXISTS', conn_key(n, d[3])) == 1 then
    redis.call('SREM', cpend_key(n, d[3]), inv)
    maybe_retire(n, d[3])
  end
  local s = {'S'}
  for i = 1, #d do s[#s + 1] = d[i] end
  for i = 1, 4 do s[#s + 1] = o[i] end
  out[#out + 1] = s
  -- Callers waiting on other replicas learn the outcome from their inbox.
  local wk = waiting_key(n, inv)
  local rs = redis.call('SMEMBERS', wk)
  if #rs > 0 then
    redis.call('DEL', wk)
    local data
    for _, r in ipairs(rs) do
      if r ~= ME then
        if not data then
          local rec = {}
          for i = 2, #s do rec[#rec + 1] = s[i] end
          data = enc(rec)
        end
        redis.call('XADD', inbox_key(r), 'MAXLEN', '~', '100000', '*', 'd', data)
        redis.call('PEXPIRE', inbox_key(r), 600000)
      end
    end
  end
  return true
end

-- Returns known, was_owner, node.
local function remove_conn(c, reason)
  local n = redis.call('HGET', G_CONNS, c)
  if not n then return false, false, '' end
  local ck = conn_key(n, c)
  local h = redis.call('HMGET', ck, 'edge', 'generation')
  redis.call('HSET', ck, 'retire_sent', '1')
  redis.call('ZREM', G_RETIRE, c)
  local pending = redis.call('SMEMBERS', cpend_key(n, c))
  table.sort(pending)
  redis.call('DEL', cpend_key(n, c))
  for _, inv in ipairs(pending) do
    finish(inv, {'4', '', '', 'connection closed (' .. reason .. ')'})
  end
  local was_owner = false
  local nk = node_key(n)
  if redis.call('HGET', nk, 'owner') == c then
    was_owner = true
    redis.call('HSET', nk, 'owner', '', 'last_seen', NOWS)
    redis.call('ZADD', G_IDLE, NOWS, n)
    publish(n, '2', reason, c, h[1], h[2])
  end
  redis.call('SREM', lease_conns_key(h[1]), c)
  redis.call('SREM', nconns_key(n), c)
  redis.call('DEL', ck)
  redis.call('HDEL', G_CONNS, c)
  return true, was_owner, n
end

-- {node, client, commands, public_key, remote_addr, owner, edge, generation, connected_at,
--  last_seen, paired} or false.
local VIEW_FIELDS = {'client', 'commands', 'public_key', 'remote_addr', 'owner', 'edge',
                     'generation', 'connected_at', 'last_seen'}
local function view(n)
  local h = redis.call('HMGET', node_key(n), unpack(VIEW_FIELDS))
  if not h[5] then return false end
  local r = {n}
  for i = 1, #VIEW_FIELDS do r[#r + 1] = h[i] or '' end
  r[#r + 1] = I(redis.call('EXISTS', dev_key(n)))
  return r
end
)lua";

constexpr char kAttach[] = R"lua(
local e, epoch = A(1), A(2)
local cur = redis.call('HGET', G_LEASES, e)
local holder = redis.call('HGET', G_HOLDERS, e)
if cur and cur ~= epoch and holder and holder ~= ME and
   tonumber(redis.call('ZSCORE', G_LEASE_EXP, e) or '0') > NOW then
  return err('9', "edge id in use: edge '" .. e .. "' is attached with another epoch through " ..
             "another registry replica and its lease is live; give every edge process its own " ..
             "--edge_id (a restarted edge is accepted once its old stream ended or its lease " ..
             "lapsed)")
end
if cur and cur ~= epoch then
  local old = redis.call('SMEMBERS', lease_conns_key(e))
  table.sort(old)
  redis.call('DEL', lease_conns_key(e))
  for _, c in ipairs(old) do remove_conn(c, 'edge_lost') end
end
if cur ~= epoch then
  -- A new process, or one whose lease lapsed: what was queued for the old stream is moot.
  redis.call('DEL', outbox_key(e), outpos_key(e))
end
redis.call('HSET', G_HOLDERS, e, ME)
redis.call('HSET', G_LEASES, e, epoch)
redis.call('ZADD', G_LEASE_EXP, I(NOW + TTL), e)
return ok()
)lua";

constexpr char kRenew[] = R"lua(
local e, epoch = A(1), A(2)
if redis.call('HGET', G_LEASES, e) ~= epoch then
  return err('9', 'edge lease lapsed or replaced: attach again')
end
redis.call('ZADD', G_LEASE_EXP, I(NOW + TTL), e)
return ok()
)lua";

constexpr char kDrain[] = R"lua(
local e, epoch = A(1), A(2)
if redis.call('HGET', G_LEASES, e) ~= epoch then
  return err('9', 'edge not attached with this epoch')
end
local conns = redis.call('SMEMBERS', lease_conns_key(e))
table.sort(conns)
redis.call('DEL', lease_conns_key(e))
for _, c in ipairs(conns) do remove_conn(c, 'edge_drain') end
redis.call('HDEL', G_LEASES, e)
redis.call('HDEL', G_HOLDERS, e)
redis.call('ZREM', G_LEASE_EXP, e)
redis.call('DEL', outbox_key(e), outpos_key(e))
return ok()
)lua";

// A(1..) = edge, epoch, position delivered up to ('' if none).
constexpr char kRelease[] = R"lua(
local e = A(1)
if redis.call('HGET', G_HOLDERS, e) ~= ME then return ok('0') end
if A(3) ~= '' and redis.call('HGET', G_LEASES, e) == A(2) then
  redis.call('SET', outpos_key(e), A(3))
end
redis.call('HDEL', G_HOLDERS, e)
return ok('1')
)lua";

// A(1) = this replica's inbox position ('' if none), then pairs: edge, position delivered
// ('' if unchanged). Returns the edges another replica holds now.
constexpr char kDelivered[] = R"lua(
if A(1) ~= '' then redis.call('XTRIM', inbox_key(ME), 'MINID', A(1)) end
local lost = {}
for i = 2, NA - 1, 2 do
  local e, pos = A(i), A(i + 1)
  if redis.call('HGET', G_HOLDERS, e) == ME then
    if pos ~= '' then
      redis.call('SET', outpos_key(e), pos)
      redis.call('XTRIM', outbox_key(e), 'MINID', pos)
    end
  else
    lost[#lost + 1] = e
  end
end
return ok_list(lost)
)lua";

// A resync runs as chunks and a sweep (RedisStore::Resync), so that no script holds Redis for
// long (an edge reports thousands of connections; every other decision, lease renewals
// included, would wait behind one big script). A chunk reconciles the connections it carries
// and marks them with the resync's token; the sweep then closes what the lease holds unmarked.
//
// Chunk: A(1..3) = edge, epoch, token; live connection i: A(3 + i) = enc{conn, node,
// public_key, client, commands, remote_addr, generation, superseded}.
constexpr char kResyncChunk[] = R"lua(
local e, epoch, token = A(1), A(2), A(3)
if redis.call('HGET', G_LEASES, e) ~= epoch then return err('9', 'resync before attach') end
local live = {}
for i = 4, NA do live[#live + 1] = dec(A(i)) end
local kept, closed = 0, 0
for _, l in ipairs(live) do
  local c, n, gen = l[1], l[2], tonumber(l[7])
  local function close_it(reason)
    tell('1', e, c, n, reason)
    closed = closed + 1
  end
  local kn = redis.call('HGET', G_CONNS, c)
  if kn then
    local ck = conn_key(kn, c)
    local h = redis.call('HMGET', ck, 'edge', 'superseded', 'retire_at')
    if h[1] == e then
      kept = kept + 1
      redis.call('HSET', ck, 'mark', token)
      if h[2] == '1' then
        -- Its retirement may have been lost with the link: say it again.
        if redis.call('SCARD', cpend_key(kn, c)) == 0 then
          redis.call('HSET', ck, 'retire_sent', '1')
          tell('1', e, c, kn, 'superseded')
        else
          local g = tonumber(h[3] or '0') - NOW
          if g < 0 then g = 0 end
          tell('0', e, c, kn, 'superseded', '', I(g))
        end
      end
    else
      close_it('superseded')
    end
  else
    -- Counters never go back: after a data loss the edges' reports raise it.
    if gen > tonumber(redis.call('GET', G_GEN) or '0') then redis.call('SET', G_GEN, I(gen)) end
    local go = true
    if l[8] == '1' then
      close_it('superseded')
      go = false
    elseif redis.call('EXISTS', dev_key(n)) == 0 then
      if gen == 0 or redis.call('EXISTS', revoked_key(n)) == 1 or
         gen <= tonumber(redis.call('GET', G_REVOKED_FLOOR) or '0') then
        close_it('revoked')
        go = false
      else
        redis.call('HSET', dev_key(n), 'node', n, 'public_key', l[3], 'approved_at', NOWS,
                   'approved_by', 'resync')
        redis.call('ZADD', G_DEVICES, '0', n)
      end
    end
    if go then
      local nh = redis.call('HMGET', node_key(n), 'generation', 'owner')
      local newest = tonumber(nh[1] or '0')
      if nh[2] and nh[2] ~= '' then
        newest = tonumber(redis.call('HGET', conn_key(n, nh[2]), 'generation') or '0')
      end
      if newest > gen then
        close_it('superseded')
      else
        new_conn(n, c, e, I(gen))
        redis.call('HSET', conn_key(n, c), 'mark', token)
        install_owner(n, c, e, I(gen), {l[4], l[5], l[3], l[6]})
        kept = kept + 1
      end
    end
  end
end
return ok(I(kept), I(closed))
)lua";

// Sweep: A(1..4) = edge, epoch, token, SSCAN cursor. Closes the lease's connections a chunk of
// this resync did not mark (the edge no longer has them); returns the next cursor ('0': done)
// and how many it closed.
constexpr char kResyncSweep[] = R"lua(
local e, epoch, token = A(1), A(2), A(3)
if redis.call('HGET', G_LEASES, e) ~= epoch then return err('9', 'resync before attach') end
local lk = lease_conns_key(e)
local page = redis.call('SSCAN', lk, A(4), 'COUNT', 256)
local held = page[2]
table.sort(held)
local closed = 0
for _, c in ipairs(held) do
  local n = redis.call('HGET', G_CONNS, c)
  if not n then
    redis.call('SREM', lk, c)
  elseif redis.call('HGET', conn_key(n, c), 'mark') ~= token then
    remove_conn(c, 'disconnect')
    closed = closed + 1
  end
end
return ok(page[1], I(closed))
)lua";

// A(1..) = conn, node, edge, epoch, public_key, remote_addr, client, commands,
// presented token hash, shared_token_ok, loopback, new request id, display name, platform,
// new token hash.
constexpr char kRegister[] = R"lua(
local c, n, e, epoch = A(1), A(2), A(3), A(4)
if redis.call('HGET', G_LEASES, e) ~= epoch then
  return err('9', 'edge not attached with this epoch')
end
if redis.call('HEXISTS', G_CONNS, c) == 1 then return err('6', 'conn id already registered') end
local dk = dev_key(n)
local paired = redis.call('EXISTS', dk) == 1
local presented = A(9)
local th = redis.call('HGET', dk, 'token_hash')
if A(10) ~= '1' then
  if not paired or presented == '' or not th or th ~= presented then
    return ok('0', '0', '', 'INVALID_REQUEST', 'unauthorized: device token mismatch',
              'AUTH_DEVICE_TOKEN_MISMATCH', '')
  end
end
if not paired then
  if AUTO_ALL or (AUTO_LB and A(11) == '1') then
    redis.call('HSET', dk, 'node', n, 'public_key', A(5), 'approved_at', NOWS,
               'approved_by', 'auto')
    redis.call('ZADD', G_DEVICES, '0', n)
    unrevoke(n)
  else
    local pk = preq_key(n)
    local rid = redis.call('HGET', pk, 'request_id')
    if not rid then
      -- Anyone with the shared token can mint keys: bound what they can make us keep.
      if redis.call('HLEN', G_PAIRING) >= MAXPAIR then
        dropped('pairing_refused')
        return ok('0', '0', '', 'UNAVAILABLE',
                  'too many pending pairing requests; try again later', '', '')
      end
      rid = A(12)
      redis.call('HSET', G_PAIRING, rid, n)
      redis.call('ZADD', G_PAIR_AGE, NOWS, rid)
      redis.call('HSET', pk, 'request_id', rid, 'node', n, 'created_at', NOWS)
    end
    redis.call('HSET', pk, 'public_key', A(5), 'display_name', A(13), 'platform', A(14),
               'commands', A(8), 'remote_addr', A(6))
    return ok('0', '0', '', 'NOT_PAIRED', 'pairing required', 'PAIRING_REQUIRED', rid)
  end
end
local token = 'presented'
th = redis.call('HGET', dk, 'token_hash')
if presented == '' or not th or th ~= presented then
  redis.call('HSET', dk, 'token_hash', A(15))
  token = 'new'
end
local gen = I(redis.call('INCR', G_GEN))
new_conn(n, c, e, gen)
install_owner(n, c, e, gen, {A(7), A(8), A(5), A(6)})
return ok('1', gen, token, '', '', '', '')
)lua";

constexpr char kClose[] = R"lua(
local e, c = A(1), A(2)
local n = redis.call('HGET', G_CONNS, c)
if not n or redis.call('HGET', conn_key(n, c), 'edge') ~= e then return ok('0', '0', '') end
local known, owner, node = remove_conn(c, 'disconnect')
return ok(known and '1' or '0', owner and '1' or '0', node)
)lua";

constexpr char kTouch[] = R"lua(
local c = A(1)
local n = redis.call('HGET', G_CONNS, c)
if n and redis.call('HGET', node_key(n), 'owner') == c then
  redis.call('HSET', node_key(n), 'last_seen', NOWS)
end
return ok()
)lua";

// A(1..) = invoke, node, command, params, key, remember, timeout, deadline, the key the node
// sees, key claim, fingerprint, the refusal's message (see InvokeStart).
constexpr char kStart[] = R"lua(
local inv, n, cmd, key = A(1), A(2), A(3), A(5)
local claim_key = NK(n, 'claim:' .. A(10))
if A(10) ~= '' then
  local c = redis.call('HMGET', claim_key, 'fp', 'expires')
  if c[1] and c[1] ~= A(11) and tonumber(c[2]) > NOW then return ok('failed', '7', A(12)) end
end
local joined = redis.call('GET', idem_key(n, key))
if joined then
  redis.call('SADD', waiting_key(n, joined), ME)
  return ok('joined', unpack(dispatch_of(n, joined)))
end
local f = redis.call('HMGET', done_key(n, key), 'invoke', 'code', 'payload', 'node_error_code',
                     'message', 'conn', 'generation', 'expires')
if f[1] and tonumber(f[8]) > NOW then
  return ok('replayed', f[1], f[2], f[3], f[4], f[5], f[6], f[7])
end
local nh = redis.call('HMGET', node_key(n), 'owner', 'commands')
if not nh[1] or nh[1] == '' then return ok('failed', '2', 'node is not connected') end
local allowed = false
for _, x in ipairs(dec(nh[2])) do
  if x == cmd then allowed = true end
end
if not allowed then
  return ok('failed', '5', "node did not declare command '" .. cmd .. "'")
end
local c = nh[1]
local ch = redis.call('HMGET', conn_key(n, c), 'edge', 'generation')
if redis.call('HEXISTS', G_HOLDERS, ch[1]) == 0 then
  return ok('failed', '4', 'edge link down')
end
-- The params go out with the dispatch (the outbox) and are not kept: a pending invoke holds
-- no more than its bookkeeping, however large its params (up to --max_params_bytes).
redis.call('HSET', inv_key(n, inv), 'conn', c, 'edge', ch[1], 'generation', ch[2],
           'command', cmd, 'key', key, 'remember', A(6), 'started', NOWS,
           'deadline', A(8), 'timeout', A(7))
redis.call('HSET', G_INVS, inv, n)
redis.call('ZADD', G_DEADLINES, A(8), inv)
redis.call('SADD', cpend_key(n, c), inv)
redis.call('SET', idem_key(n, key), inv)
redis.call('SADD', waiting_key(n, inv), ME)
if A(10) ~= '' then
  -- Expiry by the registry's clock, like outcomes; Redis's own TTL only collects the garbage.
  local ttl = tonumber(A(7)) + IDEM
  redis.call('HSET', claim_key, 'fp', A(11), 'expires', I(NOW + ttl))
  redis.call('PEXPIRE', claim_key, ttl + 60000)
end
local d = dispatch_of(n, inv)
d[7] = A(4)
local to_node = {}
for i = 1, #d do to_node[i] = d[i] end
to_node[8] = A(9)
route(ch[1], 'I', enc(to_node))
return ok('dispatched', unpack(d))
)lua";

// A(1..) = invoke, node, conn, edge, code, payload, node_error_code, message.
constexpr char kSettle[] = R"lua(
local inv = A(1)
local n = redis.call('HGET', G_INVS, inv)
if not n then return ok('0') end
local d = redis.call('HMGET', inv_key(n, inv), 'conn', 'edge')
if n ~= A(2) or d[1] ~= A(3) or (A(4) ~= '' and d[2] ~= A(4)) then return ok('0') end
if redis.call('HGET', node_key(n), 'owner') == A(3) then
  redis.call('HSET', node_key(n), 'last_seen', NOWS)
end
return ok(finish(inv, {A(5), A(6), A(7), A(8)}) and '1' or '0')
)lua";

// A(1..) = invoke, conn, edge, code, payload, node_error_code, message.
constexpr char kFail[] = R"lua(
local inv = A(1)
local n = redis.call('HGET', G_INVS, inv)
if not n then return ok('0') end
local d = redis.call('HMGET', inv_key(n, inv), 'conn', 'edge')
if A(2) ~= '' and d[1] ~= A(2) then return ok('0') end
if A(3) ~= '' and d[2] ~= A(3) then return ok('0') end
if not finish(inv, {A(4), A(5), A(6), A(7)}) then return ok('0') end
if A(4) == '6' then tell('2', d[2], d[1], n, '', inv) end
return ok('1')
)lua";

// At most BATCH items of each kind per call, so that a backlog (an edge with thousands of
// connections lapsing) never holds Redis for long; the next tick continues.
constexpr char kExpire[] = R"lua(
local BATCH = 1000
local due = redis.call('ZRANGEBYSCORE', G_DEADLINES, '-inf', NOWS, 'LIMIT', 0, BATCH)
for _, inv in ipairs(due) do
  local n = redis.call('HGET', G_INVS, inv)
  if n then
    local d = redis.call('HMGET', inv_key(n, inv), 'conn', 'edge')
    finish(inv, {'3', '', '', 'node did not answer in time'})
    tell('2', d[2], d[1], n, '', inv)
  else
    redis.call('ZREM', G_DEADLINES, inv)
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', G_LEASE_EXP, '-inf', NOWS, 'LIMIT', 0, 16)
local budget = BATCH
for _, e in ipairs(lapsed) do
  if budget <= 0 then break end
  -- The lease ends at once (a late renewal must fail: the edge re-attaches and resyncs); its
  -- connections are closed over as many calls as it takes.
  redis.call('HDEL', G_LEASES, e)
  redis.call('HDEL', G_HOLDERS, e)
  redis.call('DEL', outbox_key(e), outpos_key(e))
  local lk = lease_conns_key(e)
  local conns = redis.call('SPOP', lk, budget)
  budget = budget - #conns
  table.sort(conns)
  for _, c in ipairs(conns) do
    local n = redis.call('HGET', G_CONNS, c)
    if n then
      -- If the edge is alive after all (a stuck link), its sockets must not linger unowned.
      tell('1', e, c, n, 'edge_lost')
      remove_conn(c, 'edge_lost')
    end
  end
  if redis.call('SCARD', lk) == 0 then redis.call('ZREM', G_LEASE_EXP, e) end
end
local retire = redis.call('ZRANGEBYSCORE', G_RETIRE, '-inf', NOWS, 'LIMIT', 0, BATCH)
for _, c in ipairs(retire) do
  redis.call('ZREM', G_RETIRE, c)
  local n = redis.call('HGET', G_CONNS, c)
  if n then
    local h = redis.call('HMGET', conn_key(n, c), 'retire_sent', 'edge')
    if h[1] ~= '1' then
      redis.call('HSET', conn_key(n, c), 'retire_sent', '1')
      tell('1', h[2], c, n, 'superseded')
    end
  end
end
local old = redis.call('ZRANGEBYSCORE', G_PAIR_AGE, '-inf', I(NOW - PAIR_TTL), 'LIMIT', 0, BATCH)
for _, rid in ipairs(old) do
  local n = redis.call('HGET', G_PAIRING, rid)
  redis.call('HDEL', G_PAIRING, rid)
  redis.call('ZREM', G_PAIR_AGE, rid)
  if n and redis.call('HGET', preq_key(n), 'request_id') == rid then
    redis.call('DEL', preq_key(n))
  end
end
local idle = redis.call('ZRANGEBYSCORE', G_IDLE, '-inf', I(NOW - RETAIN), 'LIMIT', 0, BATCH)
for _, n in ipairs(idle) do
  redis.call('ZREM', G_IDLE, n)
  local owner = redis.call('HGET', node_key(n), 'owner')
  if not owner or owner == '' then  -- the node's record goes; its pairing stays
    redis.call('DEL', node_key(n))
    redis.call('ZREM', G_NODES, n)
    dropped('nodes_pruned')
  end
end
local gone = redis.call('ZRANGEBYSCORE', G_OUTCOMES, '-inf', NOWS, 'LIMIT', 0, BATCH)
for _, m in ipairs(gone) do
  local z = string.find(m, '\0', 1, true)
  local dk = done_key(string.sub(m, 1, z - 1), string.sub(m, z + 1))
  local exp = redis.call('HGET', dk, 'expires')
  if exp and tonumber(exp) <= NOW then
    forget_outcome(m)
  else
    redis.call('ZREM', G_OUTCOMES, m)
  end
end
return ok()
)lua";

// A(1..) = page token, page size, connected filter (0 any, 1 only, 2 not), paired filter.
constexpr char kListNodes[] = R"lua(
local size = tonumber(A(2))
local fc, fp = A(3), A(4)
local from = '-'
if A(1) ~= '' then from = '(' .. A(1) end
local nodes, next_token = {}, ''
while true do
  local batch = redis.call('ZRANGEBYLEX', G_NODES, from, '+', 'LIMIT', 0, 256)
  if #batch == 0 then break end
  for _, n in ipairs(batch) do
    from = '(' .. n
    local v = view(n)
    if v then
      local connected = v[6] ~= ''
      local paired = v[11] == '1'
      local skip = (fc == '1' and not connected) or (fc == '2' and connected) or
                   (fp == '1' and not paired) or (fp == '2' and paired)
      if not skip then
        if #nodes == size then
          next_token = dec(nodes[#nodes])[1]
          return ok_list(nodes, next_token)
        end
        nodes[#nodes + 1] = enc(v)
      end
    end
  end
end
return ok_list(nodes, next_token)
)lua";

constexpr char kGetNode[] = R"lua(
local v = view(A(1))
if not v then return err('5', 'unknown node id') end
return ok(enc(v))
)lua";

constexpr char kPresence[] = R"lua(
local nodes = {}
local from = '-'
while true do
  local batch = redis.call('ZRANGEBYLEX', G_NODES, from, '+', 'LIMIT', 0, 256)
  if #batch == 0 then break end
  for _, n in ipairs(batch) do
    from = '(' .. n
    local v = view(n)
    if v and v[6] ~= '' then nodes[#nodes + 1] = enc(v) end
  end
end
return ok_list(nodes, redis.call('GET', G_REV) or '0')
)lua";

// A(1..) = after, max.
constexpr char kReadPresence[] = R"lua(
local after, max = tonumber(A(1)), tonumber(A(2))
local head = tonumber(redis.call('GET', G_REV) or '0')
if after > head then
  return err('11',
             "revision is ahead of the registry's history (the registry restarted): re-list")
end
local first = head + 1
local front = redis.call('LINDEX', G_PRESENCE, 0)
if front then first = tonumber(dec(front)[1]) end
if after + 1 < first then
  return err('11', 'presence history compacted past that revision: re-list')
end
if max == 0 then return ok() end
local i = after + 1 - first
return ok_list(redis.call('LRANGE', G_PRESENCE, i, i + max - 1))
)lua";

constexpr char kListPairing[] = R"lua(
local ids = redis.call('HKEYS', G_PAIRING)
table.sort(ids)
local r = {}
for _, rid in ipairs(ids) do
  local n = redis.call('HGET', G_PAIRING, rid)
  local h = redis.call('HMGET', preq_key(n), 'request_id', 'public_key', 'display_name',
                       'platform', 'commands', 'remote_addr', 'created_at')
  if h[1] == rid then
    r[#r + 1] = enc({rid, n, h[2] or '', h[3] or '', h[4] or '', h[5] or '', h[6] or '',
                     h[7] or '0'})
  end
end
return ok_list(r)
)lua";

constexpr char kListDevices[] = R"lua(
local r = {}
for _, n in ipairs(redis.call('ZRANGE', G_DEVICES, 0, -1)) do
  local h = redis.call('HMGET', dev_key(n), 'public_key', 'approved_at', 'approved_by')
  r[#r + 1] = enc({n, h[1] or '', h[2] or '0', h[3] or ''})
end
return ok_list(r)
)lua";

// A(1..) = request id, approved by.
constexpr char kApprove[] = R"lua(
local rid = A(1)
local n = redis.call('HGET', G_PAIRING, rid)
if not n then return err('5', 'unknown pairing request id') end
local pk = redis.call('HGET', preq_key(n), 'public_key') or ''
redis.call('HSET', dev_key(n), 'node', n, 'public_key', pk, 'approved_at', NOWS,
           'approved_by', A(2))
redis.call('ZADD', G_DEVICES, '0', n)
unrevoke(n)
redis.call('HDEL', G_PAIRING, rid)
redis.call('ZREM', G_PAIR_AGE, rid)
redis.call('DEL', preq_key(n))
return ok(n, pk, NOWS, A(2))
)lua";

constexpr char kReject[] = R"lua(
local rid = A(1)
local n = redis.call('HGET', G_PAIRING, rid)
if not n then return err('5', 'unknown pairing request id') end
redis.call('HDEL', G_PAIRING, rid)
redis.call('ZREM', G_PAIR_AGE, rid)
redis.call('DEL', preq_key(n))
return ok()
)lua";

constexpr char kRevoke[] = R"lua(
local n = A(1)
if redis.call('EXISTS', dev_key(n)) == 0 then return err('5', 'device is not paired') end
redis.call('DEL', dev_key(n))
redis.call('ZREM', G_DEVICES, n)
redis.call('SET', revoked_key(n), redis.call('GET', G_GEN) or '0')
redis.call('ZADD', G_REVOKED, redis.call('INCR', P .. 'revocation_seq'), n)
local max = tonumber(A(2))
while redis.call('ZCARD', G_REVOKED) > max do
  local oldest = redis.call('ZPOPMIN', G_REVOKED)
  local g = tonumber(redis.call('GET', revoked_key(oldest[1])) or '0')
  redis.call('DEL', revoked_key(oldest[1]))
  if g > tonumber(redis.call('GET', G_REVOKED_FLOOR) or '0') then
    redis.call('SET', G_REVOKED_FLOOR, I(g))
  end
  dropped('revocations_forgotten')
end
local doomed = redis.call('SMEMBERS', nconns_key(n))
table.sort(doomed)
for _, c in ipairs(doomed) do
  local e = redis.call('HGET', conn_key(n, c), 'edge')
  remove_conn(c, 'revoked')
  tell('1', e, c, n, 'revoked')
end
return ok(I(#doomed))
)lua";

// Run at every connect with ARGV = prefix, highest generation and revision this process saw.
// Counters lower than that mean Redis lost data (for example a restart that lost the AOF's last
// second): raise them, so no generation is granted twice, and drop the presence history, whose
// revisions would no longer be consecutive (watchers are told to re-list). Returns 1 when the
// generation was raised, 2 when the revision was, 3 for both.
constexpr char kRaiseCounters[] = R"lua(
local P = ARGV[1]
local raised = 0
if tonumber(ARGV[2]) > tonumber(redis.call('GET', P .. 'generation') or '0') then
  redis.call('SET', P .. 'generation', ARGV[2])
  raised = raised + 1
end
if tonumber(ARGV[3]) > tonumber(redis.call('GET', P .. 'revision') or '0') then
  redis.call('SET', P .. 'revision', ARGV[3])
  redis.call('DEL', P .. 'presence')
  raised = raised + 2
end
return raised
)lua";

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) return "";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

// The device token as stored: its SHA-256, never the token itself. An absent token is "".
std::string TokenHash(const std::string& token) { return token.empty() ? "" : Sha256Hex(token); }

int64_t ToInt(const std::string& s) {
  int64_t v = 0;
  return absl::SimpleAtoi(s, &v) ? v : 0;
}
uint64_t ToUint(const std::string& s) {
  uint64_t v = 0;
  return absl::SimpleAtoi(s, &v) ? v : 0;
}

std::string EncodeClient(const ClientMetadata& c) {
  return RedisStore::EncodeList({c.client_id, c.display_name, c.version, c.platform,
                                 c.device_family, c.mode, c.instance_id,
                                 RedisStore::EncodeList(c.caps)});
}

ClientMetadata DecodeClient(const std::string& client, const std::string& commands) {
  ClientMetadata c;
  std::vector<std::string> f = RedisStore::DecodeList(client);
  f.resize(8);
  c.client_id = f[0];
  c.display_name = f[1];
  c.version = f[2];
  c.platform = f[3];
  c.device_family = f[4];
  c.mode = f[5];
  c.instance_id = f[6];
  c.caps = RedisStore::DecodeList(f[7]);
  c.commands = RedisStore::DecodeList(commands);
  return c;
}

// {node, client, commands, public_key, remote_addr, owner, edge, generation, connected_at,
//  last_seen, paired}
NodeView DecodeView(const std::string& data) {
  std::vector<std::string> f = RedisStore::DecodeList(data);
  f.resize(11);
  NodeView v;
  v.node_id = f[0];
  v.client = DecodeClient(f[1], f[2]);
  v.public_key = f[3];
  v.remote_addr = f[4];
  v.conn_id = f[5];
  v.connected = !f[5].empty();
  v.edge_id = f[6];
  v.generation = ToUint(f[7]);
  v.connected_at_ms = ToInt(f[8]);
  v.last_seen_ms = ToInt(f[9]);
  v.paired = f[10] == "1";
  return v;
}

PresenceKind KindOf(const std::string& s) {
  if (s == "1") return PresenceKind::kReplaced;
  if (s == "2") return PresenceKind::kDisconnected;
  return PresenceKind::kConnected;
}

// {revision, node, kind, reason, conn, edge, generation, time} starting at `f[i]`.
PresenceEvent EventFrom(const std::vector<std::string>& f, size_t i) {
  PresenceEvent e;
  e.revision = ToUint(f[i]);
  e.node_id = f[i + 1];
  e.kind = KindOf(f[i + 2]);
  e.reason = f[i + 3];
  e.conn_id = f[i + 4];
  e.edge_id = f[i + 5];
  e.generation = ToUint(f[i + 6]);
  e.time_ms = ToInt(f[i + 7]);
  return e;
}

// {invoke, node, conn, edge, gen, command, params, key, remember, started, deadline, timeout}
// starting at `f[i]`.
Dispatch DispatchFrom(const std::vector<std::string>& f, size_t i) {
  Dispatch d;
  d.invoke_id = f[i];
  d.node_id = f[i + 1];
  d.conn_id = f[i + 2];
  d.edge_id = f[i + 3];
  d.generation = ToUint(f[i + 4]);
  d.command = f[i + 5];
  d.params_json = f[i + 6];
  d.idempotency_key = f[i + 7];
  d.remember_outcome = f[i + 8] == "1";
  d.started_ms = ToInt(f[i + 9]);
  d.deadline_ms = ToInt(f[i + 10]);
  d.timeout_ms = ToInt(f[i + 11]);
  return d;
}

InvokeCode CodeOf(const std::string& s) {
  const int64_t v = ToInt(s);
  if (v < 0 || v > static_cast<int64_t>(InvokeCode::kInvalid)) return InvokeCode::kInvalid;
  return static_cast<InvokeCode>(v);
}

std::string CodeArg(InvokeCode code) { return absl::StrCat(static_cast<int>(code)); }

std::vector<std::string> Strings(const RedisValue& v) {
  std::vector<std::string> out;
  out.reserve(v.elements.size());
  for (const RedisValue& e : v.elements) out.push_back(e.AsString());
  return out;
}

// {dispatch (12 fields, see DispatchFrom), code, payload, node_error_code, message} starting
// at `f[i]`: a settled invoke, in a script's effects and in a replica's inbox.
SettledInvoke SettledFrom(const std::vector<std::string>& f, size_t i) {
  SettledInvoke s;
  s.dispatch = DispatchFrom(f, i);
  s.outcome.code = CodeOf(f[i + 12]);
  s.outcome.payload_json = f[i + 13];
  s.outcome.node_error_code = f[i + 14];
  s.outcome.message = f[i + 15];
  s.outcome.conn_id = s.dispatch.conn_id;
  s.outcome.generation = s.dispatch.generation;
  return s;
}

// {kind, edge, conn, node, reason, invoke, grace_ms} starting at `f[i]` (the `tell()` record):
// an edge command, in a script's effects and in an edge's outbox.
EdgeCommand CommandFrom(const std::vector<std::string>& f, size_t i) {
  EdgeCommand c;
  c.kind = f[i] == "0"   ? EdgeCommand::Kind::kSuperseded
           : f[i] == "2" ? EdgeCommand::Kind::kCancel
                         : EdgeCommand::Kind::kClose;
  c.edge_id = f[i + 1];
  c.conn_id = f[i + 2];
  c.node_id = f[i + 3];
  c.reason = f[i + 4];
  c.invoke_id = f[i + 5];
  c.grace_ms = ToInt(f[i + 6]);
  return c;
}

void DecodeEffects(const RedisValue& list, Effects* effects) {
  for (const RedisValue& item : list.elements) {
    std::vector<std::string> f = Strings(item);
    if (f.empty()) continue;
    if (f[0] == "P" && f.size() >= 9) {
      effects->presence.push_back(EventFrom(f, 1));
    } else if (f[0] == "S" && f.size() >= 17) {
      effects->settled.push_back(SettledFrom(f, 1));
    } else if (f[0] == "E" && f.size() >= 8) {
      effects->to_edges.push_back(CommandFrom(f, 1));
    }
  }
}

}  // namespace

std::string RedisStore::EncodeList(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) absl::StrAppend(&out, s.size(), ":", s);
  return out;
}

std::vector<std::string> RedisStore::DecodeList(const std::string& data) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < data.size()) {
    const size_t colon = data.find(':', pos);
    size_t n = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(absl::string_view(data).substr(pos, colon - pos), &n) ||
        colon + 1 + n > data.size()) {
      break;  // malformed: keep what was whole
    }
    out.push_back(data.substr(colon + 1, n));
    pos = colon + 1 + n;
  }
  return out;
}

RedisStore::RedisStore(const StoreOptions& options, const RedisStoreOptions& redis)
    : options_(options),
      prefix_(redis.key_prefix),
      replica_id_(redis.replica_id.empty() ? common::UniqueId() : redis.replica_id),
      command_timeout_(redis.client.command_timeout),
      lease_client_(std::make_unique<RedisClient>(redis.client)),
      route_client_(std::make_unique<RedisClient>(redis.client)) {
  for (int i = 0; i < std::max(redis.connections, 1); ++i) {
    pool_.push_back(std::make_unique<RedisClient>(redis.client));
  }
  client_ = pool_[0].get();
  // Every script on every pooled connection, in the same order: the handles are the same.
  auto add = [&](const char* body) {
    int handle = 0;
    for (auto& c : pool_) handle = c->AddScript(std::string(kPrelude) + body);
    return handle;
  };
  attach_ = add(kAttach);
  renew_ = lease_client_->AddScript(std::string(kPrelude) + kRenew);  // on its own connection
  drain_ = add(kDrain);
  resync_chunk_ = add(kResyncChunk);
  resync_sweep_ = add(kResyncSweep);
  register_ = add(kRegister);
  close_ = add(kClose);
  touch_ = add(kTouch);
  start_ = add(kStart);
  settle_ = add(kSettle);
  fail_ = add(kFail);
  expire_ = add(kExpire);
  list_nodes_ = add(kListNodes);
  get_node_ = add(kGetNode);
  presence_ = add(kPresence);
  read_presence_ = add(kReadPresence);
  list_pairing_ = add(kListPairing);
  list_devices_ = add(kListDevices);
  approve_ = add(kApprove);
  reject_ = add(kReject);
  revoke_ = add(kRevoke);
  release_ = add(kRelease);
  // (Not on route_client_: the router's blocking XREAD holds it for up to its wait, and the
  // tick that marks deliveries also runs the expiry that ends invokes at their deadline.)
  delivered_ = add(kDelivered);
  for (auto& c : pool_) {
    const int raise = c->AddScript(kRaiseCounters);
    c->SetConnectScript(
        raise,
        [this] {
          return std::vector<std::string>{prefix_, absl::StrCat(highest_generation_.load()),
                                          absl::StrCat(highest_revision_.load())};
        },
        [this](const RedisValue& raised) {
          if (raised.AsInt() == 0) return;
          common::Log(common::LogLevel::kWarn, "redis_counters_raised",
                      {{"generation", absl::StrCat(highest_generation_.load())},
                       {"revision", absl::StrCat(highest_revision_.load())},
                       {"why", "Redis lost data; presence watchers must re-list"}});
        });
  }
}

RedisClient& RedisStore::Decider() {
  return *pool_[next_client_.fetch_add(1, std::memory_order_relaxed) % pool_.size()];
}

void RedisStore::Observe(uint64_t generation, uint64_t revision) {
  uint64_t g = highest_generation_.load();
  while (generation > g && !highest_generation_.compare_exchange_weak(g, generation)) {
  }
  uint64_t r = highest_revision_.load();
  while (revision > r && !highest_revision_.compare_exchange_weak(r, revision)) {
  }
}

void RedisStore::ObserveEffects(const Effects& effects, size_t presence_from, size_t settled_from) {
  for (size_t i = presence_from; i < effects.presence.size(); ++i) {
    Observe(effects.presence[i].generation, effects.presence[i].revision);
  }
  for (size_t i = settled_from; i < effects.settled.size(); ++i) {
    Observe(effects.settled[i].dispatch.generation, 0);
  }
}

absl::Status RedisStore::Connect() {
  for (auto& c : pool_) RETURN_IF_ERROR(c->Connect());
  // SET NX GET is Redis 7 only; two commands are enough: a replica that starts between them
  // also sees an empty table and recovers too, which is harmless.
  auto marker = client_->Command({"EXISTS", prefix_ + "table"});
  if (!marker.ok()) return marker.status();
  started_empty_ = marker->AsInt() == 0;
  auto set = client_->Command({"SET", prefix_ + "table", "1", "NX"});
  if (!set.ok()) return set.status();
  if (started_empty_) {
    common::Log(common::LogLevel::kWarn, "redis_table_empty",
                {{"prefix", prefix_}, {"why", "new database or data lost: recovering from edges"}});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RedisValue>> RedisStore::Run(int handle, int64_t now_ms,
                                                        const std::vector<std::string>& args,
                                                        Effects* effects) {
  return RunOn(Decider(), handle, now_ms, args, effects);
}

absl::StatusOr<std::vector<RedisValue>> RedisStore::RunOn(RedisClient& client, int handle,
                                                          int64_t now_ms,
                                                          const std::vector<std::string>& args,
                                                          Effects* effects) {
  std::vector<std::string> argv = {
      prefix_,
      absl::StrCat(now_ms),
      absl::StrCat(options_.lease_ttl_ms),
      absl::StrCat(options_.superseded_grace_ms),
      absl::StrCat(options_.presence_history),
      absl::StrCat(options_.idempotency_window_ms),
      options_.auto_approve_all ? "1" : "0",
      options_.auto_approve_loopback ? "1" : "0",
      absl::StrCat(options_.max_pairing_requests),
      absl::StrCat(options_.pairing_request_ttl_ms),
      replica_id_,
      absl::StrCat(options_.node_retention_ms),
      absl::StrCat(options_.idempotency_max_bytes),
  };
  argv.insert(argv.end(), args.begin(), args.end());
  auto reply = client.Eval(handle, argv);
  if (!reply.ok()) return reply.status();
  if (reply->type != RedisValue::Type::kArray || reply->elements.size() != 2 ||
      reply->elements[0].type != RedisValue::Type::kArray || reply->elements[0].elements.empty()) {
    return absl::InternalError("redis store: malformed script reply");
  }
  // Effects first: a decision that refused still reports what it changed (nothing, so far).
  if (effects != nullptr) {
    const size_t presence_from = effects->presence.size();
    const size_t settled_from = effects->settled.size();
    DecodeEffects(reply->elements[1], effects);
    ObserveEffects(*effects, presence_from, settled_from);
  }
  std::vector<RedisValue>& result = reply->elements[0].elements;
  const std::string head = result[0].AsString();
  if (head != "OK") {
    const std::string message = result.size() > 1 ? result[1].AsString() : "";
    return absl::Status(static_cast<absl::StatusCode>(ToInt(head)), message);
  }
  return std::vector<RedisValue>(std::make_move_iterator(result.begin() + 1),
                                 std::make_move_iterator(result.end()));
}

void RedisStore::LogFailure(const char* method, const absl::Status& status) {
  common::Log(common::LogLevel::kError, "redis_store_error",
              {{"method", method}, {"status", status.ToString()}});
}

// --- Edges -----------------------------------------------------------------------------------

absl::Status RedisStore::AttachEdge(const std::string& edge_id, const std::string& epoch,
                                    int64_t now_ms, Effects* effects) {
  if (edge_id.empty() || epoch.empty()) {
    return absl::InvalidArgumentError("attach needs an edge id and an epoch");
  }
  return Run(attach_, now_ms, {edge_id, epoch}, effects).status();
}

absl::Status RedisStore::RenewLease(const std::string& edge_id, const std::string& epoch,
                                    int64_t now_ms) {
  return RunOn(*lease_client_, renew_, now_ms, {edge_id, epoch}, nullptr).status();
}

absl::Status RedisStore::DrainEdge(const std::string& edge_id, const std::string& epoch,
                                   int64_t now_ms, Effects* effects) {
  return Run(drain_, now_ms, {edge_id, epoch}, effects).status();
}

absl::StatusOr<ResyncResult> RedisStore::Resync(const std::string& edge_id,
                                                const std::string& epoch,
                                                const std::vector<LiveConnection>& live,
                                                int64_t now_ms, Effects* effects) {
  // Chunks, then the sweep (see kResyncChunk): no script holds Redis for long.
  constexpr size_t kChunk = 256;
  const std::string token = common::UniqueId();
  ResyncResult result;
  for (size_t from = 0; from < live.size() || from == 0; from += kChunk) {
    std::vector<std::string> args = {edge_id, epoch, token};
    for (size_t i = from; i < std::min(live.size(), from + kChunk); ++i) {
      const LiveConnection& l = live[i];
      args.push_back(
          EncodeList({l.spec.conn_id, l.spec.node_id, l.spec.public_key,
                      EncodeClient(l.spec.client), EncodeList(l.spec.client.commands),
                      l.spec.remote_addr, absl::StrCat(l.generation), l.superseded ? "1" : "0"}));
    }
    auto r = Run(resync_chunk_, now_ms, args, effects);
    if (!r.ok()) return r.status();
    if (r->size() >= 2) {
      result.kept += static_cast<int>((*r)[0].AsInt());
      result.closed += static_cast<int>((*r)[1].AsInt());
    }
    if (live.empty()) break;
  }
  std::string cursor = "0";
  do {
    auto r = Run(resync_sweep_, now_ms, {edge_id, epoch, token, cursor}, effects);
    if (!r.ok()) return r.status();
    if (r->size() < 2) return absl::InternalError("redis store: malformed sweep reply");
    cursor = (*r)[0].AsString();
    result.closed += static_cast<int>((*r)[1].AsInt());
  } while (cursor != "0");
  return result;
}

// --- Connections -----------------------------------------------------------------------------

absl::StatusOr<RegisterResult> RedisStore::Register(const ConnectionSpec& spec, int64_t now_ms,
                                                    Effects* effects) {
  if (spec.conn_id.empty() || spec.node_id.empty()) {
    return absl::InvalidArgumentError("register needs a conn id and a node id");
  }
  // Chosen here, used by the script only if needed: a fresh token is only ever stored hashed.
  const std::string new_token = common::RandomToken();
  auto r = Run(
      register_, now_ms,
      {spec.conn_id, spec.node_id, spec.edge_id, spec.edge_epoch, spec.public_key, spec.remote_addr,
       EncodeClient(spec.client), EncodeList(spec.client.commands), TokenHash(spec.device_token),
       spec.shared_token_ok ? "1" : "0", spec.loopback ? "1" : "0", common::RandomUuid(),
       spec.client.display_name, spec.client.platform, Sha256Hex(new_token)},
      effects);
  if (!r.ok()) return r.status();
  std::vector<std::string> f = Strings(RedisValue{RedisValue::Type::kArray, "", 0, *r});
  f.resize(7);
  RegisterResult result;
  result.granted = f[0] == "1";
  result.generation = ToUint(f[1]);
  if (f[2] == "presented") result.device_token = spec.device_token;
  if (f[2] == "new") result.device_token = new_token;
  result.error_code = f[3];
  result.error_message = f[4];
  result.details_code = f[5];
  result.pairing_request_id = f[6];
  return result;
}

CloseResult RedisStore::Close(const std::string& edge_id, const std::string& conn_id,
                              int64_t now_ms, Effects* effects) {
  auto r = Run(close_, now_ms, {edge_id, conn_id}, effects);
  if (!r.ok()) {
    LogFailure("Close", r.status());
    return CloseResult{};
  }
  CloseResult result;
  if (r->size() >= 3) {
    result.known = (*r)[0].AsString() == "1";
    result.was_owner = (*r)[1].AsString() == "1";
    result.node_id = (*r)[2].AsString();
  }
  return result;
}

void RedisStore::Touch(const std::string& conn_id, int64_t now_ms) {
  auto r = Run(touch_, now_ms, {conn_id}, nullptr);
  if (!r.ok()) LogFailure("Touch", r.status());
}

// --- Invokes ---------------------------------------------------------------------------------

InvokeStartResult RedisStore::StartInvoke(const InvokeStart& start, int64_t now_ms,
                                          Effects* effects) {
  InvokeStartResult result;
  auto r =
      Run(start_, now_ms,
          {start.invoke_id, start.node_id, start.command, start.params_json, start.idempotency_key,
           start.remember_outcome ? "1" : "0", absl::StrCat(start.timeout_ms),
           absl::StrCat(start.deadline_ms),
           start.node_idempotency_key.empty() ? start.idempotency_key : start.node_idempotency_key,
           start.key_claim, start.fingerprint, KeyReusedMessage(options_)},
          effects);
  if (!r.ok()) {
    LogFailure("StartInvoke", r.status());
    result.outcome = Failure(InvokeCode::kNotConnected,
                             "store unavailable: " + std::string(r.status().message()));
    return result;
  }
  std::vector<std::string> f = Strings(RedisValue{RedisValue::Type::kArray, "", 0, *r});
  f.resize(13);
  if (f[0] == "joined" || f[0] == "dispatched") {
    result.kind =
        f[0] == "joined" ? InvokeStartResult::Kind::kJoined : InvokeStartResult::Kind::kDispatched;
    result.dispatch = DispatchFrom(f, 1);
  } else if (f[0] == "replayed") {
    result.kind = InvokeStartResult::Kind::kReplayed;
    result.dispatch.invoke_id = f[1];
    result.outcome.code = CodeOf(f[2]);
    result.outcome.payload_json = f[3];
    result.outcome.node_error_code = f[4];
    result.outcome.message = f[5];
    result.outcome.conn_id = f[6];
    result.outcome.generation = ToUint(f[7]);
  } else {
    result.kind = InvokeStartResult::Kind::kFailed;
    result.outcome = Failure(CodeOf(f[1]), f[2]);
  }
  return result;
}

bool RedisStore::SettleInvoke(const std::string& invoke_id, const std::string& node_id,
                              const std::string& conn_id, const std::string& edge_id,
                              const InvokeOutcome& outcome, int64_t now_ms, Effects* effects) {
  auto r = Run(settle_, now_ms,
               {invoke_id, node_id, conn_id, edge_id, CodeArg(outcome.code), outcome.payload_json,
                outcome.node_error_code, outcome.message},
               effects);
  if (!r.ok()) {
    LogFailure("SettleInvoke", r.status());
    return false;
  }
  return !r->empty() && (*r)[0].AsString() == "1";
}

bool RedisStore::FailInvoke(const std::string& invoke_id, const std::string& conn_id,
                            const std::string& edge_id, const InvokeOutcome& outcome,
                            int64_t now_ms, Effects* effects) {
  auto r = Run(fail_, now_ms,
               {invoke_id, conn_id, edge_id, CodeArg(outcome.code), outcome.payload_json,
                outcome.node_error_code, outcome.message},
               effects);
  if (!r.ok()) {
    LogFailure("FailInvoke", r.status());
    return false;
  }
  return !r->empty() && (*r)[0].AsString() == "1";
}

// --- Time ------------------------------------------------------------------------------------

void RedisStore::Expire(int64_t now_ms, Effects* effects) {
  auto r = Run(expire_, now_ms, {}, effects);
  if (!r.ok()) LogFailure("Expire", r.status());
}

// --- Reads -----------------------------------------------------------------------------------

absl::StatusOr<NodePage> RedisStore::ListNodes(const NodeFilter& filter,
                                               const std::string& page_token, int page_size) {
  if (page_size <= 0) page_size = 100;
  page_size = std::min(page_size, 1000);
  auto code = [](auto v) { return absl::StrCat(static_cast<int>(v)); };
  NodePage page;
  auto r = Run(list_nodes_, 0,
               {page_token, absl::StrCat(page_size), code(filter.connected), code(filter.paired)},
               nullptr);
  if (!r.ok()) {
    LogFailure("ListNodes", r.status());
    return r.status();
  }
  if (r->empty()) return page;
  page.next_page_token = (*r)[0].AsString();
  for (size_t i = 1; i < r->size(); ++i) page.nodes.push_back(DecodeView((*r)[i].AsString()));
  return page;
}

absl::StatusOr<NodeView> RedisStore::GetNode(const std::string& node_id) {
  auto r = Run(get_node_, 0, {node_id}, nullptr);
  if (!r.ok()) return r.status();
  if (r->empty()) return absl::InternalError("redis store: malformed node");
  return DecodeView((*r)[0].AsString());
}

absl::StatusOr<PresenceSnapshot> RedisStore::GetPresence() {
  PresenceSnapshot snap;
  auto r = Run(presence_, 0, {}, nullptr);
  if (!r.ok()) {
    LogFailure("GetPresence", r.status());
    return r.status();
  }
  if (r->empty()) return snap;
  snap.revision = ToUint((*r)[0].AsString());
  Observe(0, snap.revision);
  for (size_t i = 1; i < r->size(); ++i) snap.nodes.push_back(DecodeView((*r)[i].AsString()));
  return snap;
}

absl::StatusOr<std::vector<PresenceEvent>> RedisStore::ReadPresence(uint64_t after, size_t max) {
  auto r = Run(read_presence_, 0, {absl::StrCat(after), absl::StrCat(max)}, nullptr);
  if (!r.ok()) return r.status();
  std::vector<PresenceEvent> out;
  out.reserve(r->size());
  for (const RedisValue& v : *r) {
    std::vector<std::string> f = DecodeList(v.AsString());
    if (f.size() < 8) return absl::InternalError("redis store: malformed presence event");
    out.push_back(EventFrom(f, 0));
    Observe(out.back().generation, out.back().revision);
  }
  return out;
}

uint64_t RedisStore::HeadRevision() {
  auto r = Decider().Command({"GET", prefix_ + "revision"});
  if (!r.ok()) {
    LogFailure("HeadRevision", r.status());
    return 0;
  }
  const uint64_t head = ToUint(r->AsString());
  Observe(0, head);
  return head;
}

StoreDrops RedisStore::Dropped() {
  StoreDrops drops;
  auto r = Decider().Command({"HGETALL", prefix_ + "dropped"});
  if (!r.ok()) {
    LogFailure("Dropped", r.status());
    return drops;
  }
  const std::vector<RedisValue>& fields = r->elements;
  for (size_t i = 0; i + 1 < fields.size(); i += 2) {
    const std::string& what = fields[i].str;
    const int64_t count = fields[i + 1].AsInt();
    if (what == "outcomes_forgotten") drops.outcomes_forgotten = count;
    if (what == "nodes_pruned") drops.nodes_pruned = count;
    if (what == "revocations_forgotten") drops.revocations_forgotten = count;
    if (what == "pairing_refused") drops.pairing_refused = count;
  }
  return drops;
}

// --- Pairing ---------------------------------------------------------------------------------

std::vector<PairingRequest> RedisStore::ListPairingRequests() {
  std::vector<PairingRequest> out;
  auto r = Run(list_pairing_, 0, {}, nullptr);
  if (!r.ok()) {
    LogFailure("ListPairingRequests", r.status());
    return out;
  }
  for (const RedisValue& v : *r) {
    std::vector<std::string> f = DecodeList(v.AsString());
    f.resize(8);
    PairingRequest& p = out.emplace_back();
    p.request_id = f[0];
    p.node_id = f[1];
    p.public_key = f[2];
    p.display_name = f[3];
    p.platform = f[4];
    p.commands = DecodeList(f[5]);
    p.remote_addr = f[6];
    p.created_at_ms = ToInt(f[7]);
  }
  return out;
}

std::vector<Device> RedisStore::ListDevices() {
  std::vector<Device> out;
  auto r = Run(list_devices_, 0, {}, nullptr);
  if (!r.ok()) {
    LogFailure("ListDevices", r.status());
    return out;
  }
  for (const RedisValue& v : *r) {
    std::vector<std::string> f = DecodeList(v.AsString());
    f.resize(4);
    out.push_back(Device{f[0], f[1], ToInt(f[2]), f[3]});
  }
  return out;
}

absl::StatusOr<Device> RedisStore::ApprovePairing(const std::string& request_id,
                                                  const std::string& approved_by, int64_t now_ms) {
  auto r = Run(approve_, now_ms, {request_id, approved_by}, nullptr);
  if (!r.ok()) return r.status();
  std::vector<std::string> f = Strings(RedisValue{RedisValue::Type::kArray, "", 0, *r});
  f.resize(4);
  return Device{f[0], f[1], ToInt(f[2]), f[3]};
}

absl::Status RedisStore::RejectPairing(const std::string& request_id) {
  return Run(reject_, 0, {request_id}, nullptr).status();
}

absl::StatusOr<int> RedisStore::RevokeDevice(const std::string& node_id, int64_t now_ms,
                                             Effects* effects) {
  auto r = Run(revoke_, now_ms, {node_id, absl::StrCat(options_.max_revocations)}, effects);
  if (!r.ok()) return r.status();
  if (r->empty()) return absl::InternalError("redis store: malformed revoke reply");
  return static_cast<int>((*r)[0].AsInt());
}

// --- Routing between replicas ----------------------------------------------------------------

std::string RedisStore::OutboxKey(const std::string& edge_id) const {
  return absl::StrCat(prefix_, "outbox:{", edge_id, "}");
}

std::string RedisStore::InboxKey() const { return absl::StrCat(prefix_, "inbox:", replica_id_); }

absl::StatusOr<RoutedBatch> RedisStore::ReadRouted(const std::vector<OutboxPosition>& edges,
                                                   const std::string& inbox_after,
                                                   int64_t wait_ms) {
  RoutedBatch batch;
  batch.inbox_position = inbox_after;
  std::vector<std::string> keys;
  std::vector<std::string> ids;
  absl::flat_hash_map<std::string, std::string> edge_of;  // outbox key -> edge id
  for (const OutboxPosition& e : edges) {
    std::string position = e.position;
    if (position.empty()) {  // a route new to this replica: continue where the last holder was
      auto r =
          route_client_->Command({"GET", absl::StrCat(prefix_, "outbox_pos:{", e.edge_id, "}")});
      if (!r.ok()) return r.status();
      position = r->is_nil() ? "0-0" : r->AsString();
    }
    keys.push_back(OutboxKey(e.edge_id));
    edge_of[keys.back()] = e.edge_id;
    ids.push_back(position);
  }
  const std::string inbox = InboxKey();
  keys.push_back(inbox);
  ids.push_back(inbox_after.empty() ? "0-0" : inbox_after);
  std::vector<std::string> argv = {"XREAD", "COUNT", "1024"};
  if (wait_ms > 0) {
    argv.push_back("BLOCK");
    argv.push_back(absl::StrCat(wait_ms));
  }
  argv.push_back("STREAMS");
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), ids.begin(), ids.end());
  auto reply = wait_ms > 0
                   ? route_client_->Command(argv, absl::Milliseconds(wait_ms) + command_timeout_)
                   : route_client_->Command(argv);
  if (!reply.ok()) return reply.status();
  if (reply->is_nil()) return batch;  // nothing arrived
  for (const RedisValue& stream : reply->elements) {
    if (stream.elements.size() != 2) continue;
    const std::string key = stream.elements[0].AsString();
    const bool is_inbox = key == inbox;
    for (const RedisValue& entry : stream.elements[1].elements) {
      if (entry.elements.size() != 2) continue;
      const std::string id = entry.elements[0].AsString();
      std::string type, data;
      const auto& fields = entry.elements[1].elements;
      for (size_t i = 0; i + 1 < fields.size(); i += 2) {
        const std::string name = fields[i].AsString();
        if (name == "t") type = fields[i + 1].AsString();
        if (name == "d") data = fields[i + 1].AsString();
      }
      std::vector<std::string> f = DecodeList(data);
      if (is_inbox) {
        batch.inbox_position = id;
        if (f.size() >= 16) batch.settled.push_back(SettledFrom(f, 0));
        continue;
      }
      RoutedMessage& m = batch.to_edges.emplace_back();
      m.edge_id = edge_of[key];
      m.position = id;
      if (type == "I" && f.size() >= 12) {
        m.invoke = true;
        m.dispatch = DispatchFrom(f, 0);
      } else if (type == "E" && f.size() >= 7) {
        m.command = CommandFrom(f, 0);
      } else {
        batch.to_edges.pop_back();  // malformed: skip it (its position is passed by the next)
      }
    }
  }
  return batch;
}

absl::StatusOr<std::vector<std::string>> RedisStore::MarkDelivered(
    const std::vector<OutboxPosition>& delivered, const std::string& inbox_position) {
  std::vector<std::string> args = {inbox_position};
  for (const OutboxPosition& d : delivered) {
    args.push_back(d.edge_id);
    args.push_back(d.position);
  }
  auto r = Run(delivered_, 0, args, nullptr);
  if (!r.ok()) return r.status();
  return Strings(RedisValue{RedisValue::Type::kArray, "", 0, *r});
}

void RedisStore::ReleaseEdge(const std::string& edge_id, const std::string& epoch,
                             const std::string& position) {
  auto r = Run(release_, 0, {edge_id, epoch, position}, nullptr);
  if (!r.ok()) LogFailure("ReleaseEdge", r.status());
}

}  // namespace tether::registry
