"""Sessions in Redis or a Redis Cluster, on core commands and Lua scripts (no modules).

Key layout. A store (prefix ``P``) keeps each session, and the indexes that list it, in one
cluster *hash tag* ``T``: ``{P}`` for a store of one shard (the default), ``{P#0}`` ...
``{P#n-1}`` for a store of ``n`` shards, a session going to shard ``crc32(id) % n``. All keys
with one tag live in one cluster slot, so a write, its check and its index updates are one
atomic script, in a cluster too. Ids are written into key names as their UTF-8 bytes, after
the fixed part, so any id makes a valid key::

    {T}:h:<session id>        hash    the header: ``data`` (the session as JSON, with null
                                      in place of its runs when they are a list),
                                      ``version``, ``created_at``, ``expires_at``, ``runs``
                                      (how many: present when the runs are in the list
                                      below), ``token`` (the last write), ``past``
                                      (the tokens of the 8 writes before it)
    {T}:r:<session id>        list    one JSON text per run, in order
    {T}:d:<session id>        string  a 32-character digest per run, in order
    {T}:all                   zset    every session; score ``-created_at``, so an ascending
                                      range is newest first and ties come in id order
    {T}:u:<user id>           zset    the sessions of one user (same scores)
    {T}:e:<entity id>         zset    the sessions of one agent, team or workflow
    {T}:ue:<n>:<user><entity> zset    both at once (``n``: the user id's length in bytes)
    {T}:idx                   hash    session id -> the index keys it is listed in (NUL-joined)
    {T}:exp                   zset    sessions that expire; score ``expires_at``
    {P}:shards                string  the store's shard count, fixed by its first write
    {P}:mode                  string  the mode of the store's sessions, fixed with the count

Braces, ``#`` and spaces cannot occur in a prefix, so the keys of ``P`` and ``P:sub`` (or
``P#1``) never meet.

A store is there (:meth:`RedisStorage.table_exists`) once ``{P}:shards`` is: its first write,
or :meth:`RedisStorage.create`, records it. Reads, listings and removals write nothing on a
store that is not there, so a mistyped prefix leaves no key behind; a storage reads the
shard count again on each call until the store is there, as another storage may make it,
over other shards, meanwhile.

One mode. A store keeps the sessions of one mode: the script that records the shard count
records the storage's mode beside it, in one step, so of two first writers of different
modes one records its mode and the other finds it. A storage of another mode is refused on
every call, as a SQL table of another mode is: reading the layout (once per storage, as
before) raises :class:`~savegame.errors.CorruptSessionError` naming the store's mode, and
nothing is read, listed, written or removed. A store an earlier savegame made has its count
but no mode: reads take it as they did, and its first write by this savegame records the
writer's mode when some of its newest sessions (:data:`SAMPLE` per slot) are of that mode,
or none tells a mode; when they are another mode's, the writer is refused and records
nothing. :meth:`RedisStorage.upgrade_schema` tells the mode of a prefix holding only the
original's layout from the sessions it is to move. ``drop`` forgets the mode with the
shard count; a write that makes a slot's ``{T}:all`` (the store's first in that slot, or
the first since the slot was emptied or dropped) reads the layout again, recording it when
it is gone (as another storage's ``drop`` leaves it), so a store that holds sessions keeps
its count and mode recorded. The write script of a store of one shard, whose tag is the
record's, checks the recorded mode itself: a storage that read the layout before the store
was dropped, or lost in a restart of Redis, and made again in another mode, is refused. So is
its write that would make the slot's ``{T}:all`` where the store was made again over several
shards: the storage reads the layout again, and writes on that (``shards=None``) or refuses.

Writes. Every write leaves a random ``token`` in the header. A write reads the header (token,
version, created_at, expiry, run digests), stamps the record in Python (version check, times),
and runs one script that checks the token is still the one it read, moves the session between
indexes, rewrites the header, and sends only the runs whose digest changed, with their
digests (``LSET`` or ``RPUSH``, ``SETRANGE``; ``LTRIM`` for a shorter list): what a save sends
does not grow with the conversation. When another write came in between, the script
changes nothing and hands back the header it found, and the write starts again on that; a
token, unlike a version, is never reused, even when a session is deleted and made again. A
storage remembers what it last read or wrote of each of its recent sessions
(:mod:`savegame.storage.known`) and writes on that without reading first, and takes a
session it has not seen for a new one while that guess keeps proving right, so a save costs
one round trip; a wrong guess costs one more, never a wrong write (a write larger than
:data:`GUESS` is not sent on a guess about a session not seen: the header is read first).
The runs it remembers unchanged are not encoded again, and a read of a session it remembers
asks for the header's token alone (one ``HGET``) and, finding it unchanged, returns a copy
of what it remembers; finding it changed, it fetches the digests and only the runs after
those remembered (``LRANGE`` from there). A script retried
after a lost connection whose first attempt had landed finds its own new token, or finds it
among the ``past`` tokens when other writes came in before the retry, and reports the write
made without making it twice; this holds too for a client of the caller's that sends the
script again on its own.

Expiry is Redis's own: with ``expire`` set, the header and the runs get an ``EXPIRE`` of the
seconds the writer's clock gives the session (its ``expires_at`` less the write's time), not
an ``EXPIREAT``, which the server would read by its own clock, dropping at once the sessions
of a writer whose clock is behind the server's by more than ``expire``. Index
entries cannot expire by themselves, so ``{T}:exp`` remembers when each session goes: listings
skip (and remove) entries whose time has come, and :meth:`RedisStorage.purge_expired` removes
them all. ``drop`` walks ``{T}:all``. Listings and ``drop`` never run ``KEYS`` or ``SCAN``;
only :meth:`RedisStorage.upgrade_schema` scans, once, for sessions of the original layout,
and :meth:`RedisStorage.awaiting_upgrade` (which the ``savegame`` command calls for a prefix
it finds empty), in a small server.

Damage. The header counts the session's runs. The read script, and the write script when it
sends only the changed runs, refuse a session whose list or digests disagree with that count
(keys evicted by a ``maxmemory-policy``, or removed outside savegame): the client raises
:class:`~savegame.errors.CorruptSessionError` rather than return the session short or write
onto it. A count, version or time of the header (or of its JSON) that is not a whole number
(edited by hand) raises it too, naming the session. A session whose header is gone is gone:
a read finds none, and a live listing removes its index entries (and the rest) instead of
listing it.

Shards, the trade-off. With one shard a store is served by one cluster master: one store's
throughput is one node's, and a listing is one script call. With ``n`` shards a store's
sessions and writes spread over the masters, and a listing asks each shard and merges the
answers (``n`` calls, each bounded by the listing's ``limit``). Each session still changes in
one atomic step, because a session and its index entries share a shard. Stores that need no
more than a node keep the default; so do stores on a single server, where shards only cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import ssl as stdlib_ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from operator import methodcaller
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from savegame.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptSessionError,
    InvalidIdentifierError,
    MissingDependencyError,
    SerializationError,
    StorageError,
)
from savegame.storage.base import (
    CONNECT_RETRIES,
    HOLDING,
    STAMPED,
    Draft,
    Header,
    Record,
    Stamp,
    Still,
    Storage,
    check_seconds,
    check_stored,
    is_expired,
    whole_number,
    with_retries,
)
from savegame.storage.codec import check_id, check_name, dumps, loads, object_text
from savegame.storage.known import (
    DEFAULT_BYTES,
    PAST_TOKENS,
    Known,
    KnownSessions,
    RunEncoder,
    outcome_unknown,
    resent_write_made,
)
from savegame.storage.session import MODES, Mode, beside_runs, modes_of, set_path
from savegame.storage.url import StorageURL

PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")
"""What a key prefix may look like: no braces (they would break the hash tag), no spaces."""

PREFIX_ALLOWED = (
    "letters, digits and _ . : -, starting with a letter, digit or underscore, at most 200 "
    "characters"
)

_GLOB = re.compile(r"[*?[\]\\^]")
"""What a ``SCAN MATCH`` pattern reads as other than itself, each escaped by a backslash."""

LOOK_LIMIT = 200_000
"""The most keys a server may hold for :meth:`RedisStorage.awaiting_upgrade` to look for
the original's sessions (``SCAN`` walks them all when none is there)."""


def _original_keys(client: Any, prefix: str) -> Iterator[Any]:
    """The string keys of ``client``'s server that begin with ``prefix:``, where the
    original ``RedisStorage`` kept its sessions, in ``SCAN`` steps."""
    pattern = _GLOB.sub(r"\\\g<0>", prefix) + ":*"
    keys: Iterator[Any] = client.scan_iter(match=pattern, count=1000, _type="string")
    return keys


DIGEST_SIZE = 16
"""Bytes of BLAKE2b per run digest (32 hex characters), as in the SQL backends: a digest
taken as the same says a run is unchanged, so it must stay out of reach of a crafted pair
of runs, which 64 bits are not."""
_WIDTH = 2 * DIGEST_SIZE

LEGACY_WIDTH = 16
"""Characters per run digest of sessions written by savegame before digests were widened to
:data:`DIGEST_SIZE`. Reads take such a session as it is; the scripts report its digests as
:data:`_UNKNOWN` characters, and the storage does not remember it, so its next save encodes
every run afresh, finds none of them stored, sends them all and leaves digests of today's
width. The write script refuses one that would send fewer."""
_UNKNOWN = "?"

TOKEN_BYTES = 8
"""Random bytes of a write token (16 hex characters)."""

BATCH = 500
"""Sessions removed per script call by ``drop`` and ``purge_expired``, so no call blocks long."""

READ_BATCH = 50
"""Sessions read per script call by the listings that return sessions."""

MAX_WRITE_ATTEMPTS = 1000
"""Writes that found the session changed between reading its header and writing it."""

GUESS = 64 * 1024
"""Largest write (in characters) sent on the guess that a session not seen is new."""

SOCKET_TIMEOUT = 30.0
"""Seconds a call waits for the server's reply by default before it fails."""
CONNECT_TIMEOUT = 5.0
"""Seconds a connection to the server may take by default."""
MAX_SHARDS = 1024
"""The most slots one store may spread over."""

SAMPLE = 8
"""Sessions per slot whose headers tell the mode of a store that recorded none."""

MAX_ARGUMENT = 512 * 1024 * 1024
"""Bytes of the largest value a write sends as one argument: Redis's default
``proto-max-bulk-len``. A server refuses a larger one by closing the connection, which looks
like a server gone away; savegame refuses it before sending, with SerializationError."""

T = TypeVar("T")
Id = TypeVar("Id", str, bytes)

# Shared by the scripts that read a header's JSON: the record of the header ``header``, nil
# where there is none or its data cannot be read. Redis's cjson refuses the whole text over
# one \uXXXX escape of a lone surrogate, which savegame writes for one (model output holds
# them). Such a header is written all in ASCII, a character beyond U+FFFF as the escapes of
# its surrogate pair: each pair is first made the character's UTF-8 (an id may hold one);
# ids never hold a lone surrogate, so each escape left (an odd run of backslashes before the
# u) is read as a '?'.
_RECORD = """
local function utf8_of(high, low)
  local c = 0x10000 + (tonumber(high, 16) - 0xD800) * 0x400 + tonumber(low, 16) - 0xDC00
  return string.char(0xF0 + math.floor(c / 0x40000), 0x80 + math.floor(c / 0x1000) % 0x40,
    0x80 + math.floor(c / 0x40) % 0x40, 0x80 + c % 0x40)
end

local function record_of(header)
  local text = redis.call('HGET', header, 'data') or ''
  text = string.gsub(text, '(\\\\+)u([dD][89abAB]%x%x)\\\\u([dD][c-fC-F]%x%x)',
    function(slashes, high, low)
      if #slashes % 2 == 1 then return string.sub(slashes, 2) .. utf8_of(high, low) end
    end)
  text = string.gsub(text, '(\\\\+)u[dD][89a-fA-F]%x%x', function(slashes)
    if #slashes % 2 == 1 then return string.sub(slashes, 2) .. '?' end
  end)
  local ok, record = pcall(cjson.decode, text)
  if not ok or type(record) ~= 'table' then return nil end
  return record
end
"""

# Shared by the scripts that change sessions and by _ACL_PROBE. first_denied: 'COMMAND key'
# for the first of ``commands`` (each a command and its arguments, a key first) the server's
# ACL denies the user, nil when it denies none; denied: the same as an error reply (see
# RedisStorage._mapped). Checked before the first change: a script that meets a command it
# may not run stops there, and what it changed stays changed. Redis before 7.0 has no
# redis.acl_check_cmd, and nothing is checked there. write_needs: the commands _WRITE runs,
# given keys ``K`` as it declares them, the session's id and the index keys it leaves;
# forget_needs: those _FORGET runs, given its store keys ``K``, where each id's keys begin
# (``at``) and the index keys it removes ids from. The scripts build and check their list
# only where CHECK is true: in the variant a storage runs when the server's ACL restricts
# its user on the store's keys (see RedisStorage._acl_probe).
_DENIED = """
local function first_denied(commands)
  if not redis.acl_check_cmd then return nil end
  for _, command in ipairs(commands) do
    if not redis.acl_check_cmd(unpack(command)) then return command[1] .. ' ' .. command[2] end
  end
  return nil
end

local function denied(commands)
  local what = first_denied(commands)
  if what then return redis.error_reply('SAVEGAME-DENIED ' .. what) end
  return nil
end

local function write_needs(K, id, stale)
  local needed = {
    {'ZADD', K[1], '0', id}, {'HSET', K[2], id, ''}, {'ZADD', K[3], '0', id},
    {'ZREM', K[3], id}, {'HSET', K[4], 'token', ''}, {'HDEL', K[4], 'runs'},
    {'LLEN', K[5]}, {'LSET', K[5], '0', ''}, {'RPUSH', K[5], ''},
    {'LTRIM', K[5], '0', '0'}, {'SET', K[6], ''}, {'SETRANGE', K[6], '0', ''},
    {'GETRANGE', K[6], '0', '0'}
  }
  for k = 4, 6 do
    needed[#needed + 1] = {'EXPIRE', K[k], '1'}
    needed[#needed + 1] = {'PERSIST', K[k]}
    if k > 4 then needed[#needed + 1] = {'DEL', K[k]} end
  end
  for i = 7, #K do needed[#needed + 1] = {'ZADD', K[i], '0', id} end
  for _, key in ipairs(stale) do needed[#needed + 1] = {'ZREM', key, id} end
  return needed
end

local function forget_needs(K, at, listed, id)
  local needed = {{'ZREM', K[1], id}, {'HDEL', K[2], id}, {'ZREM', K[3], id}}
  for _, k in ipairs(at) do
    for j = k, k + 2 do needed[#needed + 1] = {'DEL', K[j]} end
  end
  for _, key in ipairs(listed) do needed[#needed + 1] = {'ZREM', key, id} end
  return needed
end
"""


def _allowed(check: bool) -> str:
    """:data:`_DENIED`, with the scripts' ``CHECK`` set to ``check``."""
    return f"local CHECK = {'true' if check else 'false'}\n" + _DENIED


# Shared by the scripts that list and remove sessions: the index keys (user, entity, both)
# that the header ``header`` names for its session under ``tag``, the mode's entity field
# being ``field``; nil where there is no header or its data cannot be read. What {T}:idx
# keeps, told again from the header for a session {T}:idx has no entry for (evicted by a
# maxmemory-policy).
_INDEXED = (
    _RECORD
    + """
local function indexed(tag, header, field)
  local record = record_of(header)
  if not record then return nil end
  local keys = {}
  local user, entity = record['user_id'], record[field]
  if type(user) == 'string' then keys[#keys + 1] = tag .. 'u:' .. user end
  if type(entity) == 'string' then keys[#keys + 1] = tag .. 'e:' .. entity end
  if #keys == 2 then keys[3] = tag .. 'ue:' .. #user .. ':' .. user .. entity end
  return keys
end
"""
)

# Shared by the scripts that remove sessions. KEYS[1..3] are {P}:all, {P}:idx, {P}:exp;
# KEYS[at[n]], KEYS[at[n] + 1], KEYS[at[n] + 2] are the header, runs and digests of ids[n]
# (declared, so that a cluster runs the script only on the node that holds them: see _WRITE).
# Slot migration: in a cluster, a command of a script on a key of its slot that is not on
# the node (moved already, or missing while the slot is MIGRATING) aborts the script, and
# what it had done stays done. So the scripts read every key they will change before their
# first change, never touch a key again after a change may have removed it (each key is
# changed once), and remove a session's data before its index entries: an index entry
# left without its session is dropped by the next listing; a session left without its
# index entries would never be listed, nor found by delete_user, again.
# A session {T}:idx has no entry for ({T}:idx evicted) leaves the index keys its header
# names (see _INDEXED); ``field``: the mode's entity field.
_FORGET = """
local function forget(ids, at, field)
  local listed, where, hit = {}, {}, {}
  local tag = string.sub(KEYS[1], 1, -4)
  for n, id in ipairs(ids) do
    local keys = redis.call('HGET', KEYS[2], id)
    local found = {}
    if keys then
      hit[n] = true
      for key in string.gmatch(keys, '[^%z]+') do found[#found + 1] = key end
    else
      found = indexed(tag, KEYS[at[n]], field) or {}
    end
    for _, key in ipairs(found) do
      redis.call('ZSCORE', key, id)
      if not where[key] then
        where[key] = {}
        listed[#listed + 1] = key
      end
      table.insert(where[key], id)
    end
  end
  if CHECK and #ids > 0 then
    local bad = denied(forget_needs(KEYS, at, listed, ids[1]))
    if bad then return bad end
  end
  for n, id in ipairs(ids) do
    local k = at[n]
    if redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2]) > 0 then hit[n] = true end
  end
  for _, key in ipairs(listed) do redis.call('ZREM', key, unpack(where[key])) end
  if #ids > 0 then
    redis.call('ZREM', KEYS[1], unpack(ids))
    redis.call('HDEL', KEYS[2], unpack(ids))
    redis.call('ZREM', KEYS[3], unpack(ids))
  end
  local removed = {}
  for n in ipairs(ids) do
    if hit[n] then removed[#removed + 1] = n end
  end
  return removed
end
"""

# Shared by the scripts: what a write needs of a stored session, as _state_of takes it (with
# '?' for digests of LEGACY_WIDTH); and the error reply (see RedisStorage._mapped) for a
# session whose list of runs or digests disagree with the header's run count (the count
# said as nil when there is none, as ? when it is not a number), nil when they agree.
_HEAD = """
local function head(header, digests)
  local h = redis.call('HMGET', header, 'token', 'version', 'created_at', 'expires_at', 'runs')
  local d = false
  if h[5] then
    d = redis.call('GET', digests) or ''
    local count = tonumber(h[5])
    if count and count > 0 and #d == count * LEGACY then d = string.rep('?', count * WIDTH) end
  end
  return {h[1], h[2], h[3], h[4], d}
end
local function damaged(header, runs, digests)
  local stored = redis.call('HGET', header, 'runs')
  local count = tonumber(stored)
  local length = redis.call('LLEN', runs)
  local size = redis.call('STRLEN', digests)
  if count == length and (size == length * WIDTH or size == length * LEGACY) then return nil end
  local said = 'nil'
  if stored then said = count and tostring(count) or '?' end
  return redis.error_reply('SAVEGAME-DAMAGED ' .. said .. ' ' .. length .. ' ' .. header)
end
""".replace("WIDTH", str(_WIDTH)).replace("LEGACY", str(LEGACY_WIDTH))

# KEYS: all, idx, exp, header, runs, digests, new index keys...
# ARGV: key prefix, id, token of the header written on ('': none), new token, score,
#       expires_at (''), data, version, created_at, run count ('': runs not in a list),
#       runs mode ('keep' or 'replace'), the mode's entity field, seconds the keys live
#       ('' with no expires_at), the writer's mode, then (position, digest, text) for each
#       new or changed run, in ascending order.
# A store recorded as of another mode ({T}:mode, the store's record in a store of one
# shard) refuses the write: the writer read the layout before the store was dropped, or
# the server lost its data, and a storage of another mode made it again since. So does,
# for a write that would make the slot's {T}:all, a store of one shard's tag recorded as
# spread over several ({T}:shards): made again so since, its sessions are in other slots.
# Returns 1 when written (2 when the write made the slot's {T}:all, which a store loses with
# its last session or to a drop: see RedisStorage._write), or when the token differs the
# stored header (see _HEAD) and its past tokens, for a write sent again to tell whether an
# earlier sending was made. Writing only the changed runs ('keep') onto a damaged session
# (see _HEAD) is refused.
_WRITE_BODY = """
local id = ARGV[2]
local kept = redis.call('GET', ARGV[1] .. 'mode')
if kept and kept ~= ARGV[14] then return redis.error_reply('SAVEGAME-MODE ' .. kept) end
local stored = redis.call('HMGET', KEYS[4], 'token', 'past')
local current = stored[1] or ''
local past = stored[2] or ''
if current ~= ARGV[3] then
  local found = head(KEYS[4], KEYS[6])
  found[6] = past
  return found
end
past = string.sub(current .. past, 1, PAST)
local fresh = redis.call('EXISTS', KEYS[1]) == 0
if fresh then
  local shards = redis.call('GET', ARGV[1] .. 'shards')
  if shards and tonumber(shards) ~= 1 then
    return redis.error_reply('SAVEGAME-SHARDS ' .. shards)
  end
end
-- Reads first (see _FORGET): the index keys the session leaves, which are not declared;
-- those its header names where {T}:idx has no entry for it (evicted).
local listed = redis.call('HGET', KEYS[2], id)
local was = {}
if listed then
  for key in string.gmatch(listed, '[^%z]+') do was[#was + 1] = key end
else
  was = indexed(ARGV[1], KEYS[4], ARGV[12]) or {}
end
local new, stale = {}, {}
for i = 7, #KEYS do new[KEYS[i]] = true end
for _, key in ipairs(was) do
  if not new[key] then
    redis.call('ZSCORE', key, id)
    stale[#stale + 1] = key
  end
end
if CHECK then
  local refused = denied(write_needs(KEYS, id, stale))
  if refused then return refused end
end
if ARGV[11] == 'keep' then
  local bad = damaged(KEYS[4], KEYS[5], KEYS[6])
  if bad then return bad end
  -- Digests of the legacy width: every run is sent, with its digest of today's width.
  if redis.call('STRLEN', KEYS[6]) ~= redis.call('LLEN', KEYS[5]) * WIDTH then
    if (#ARGV - 14) / 3 ~= (tonumber(ARGV[10]) or 0) then
      return redis.error_reply('SAVEGAME-LEGACY ' .. KEYS[4])
    end
    redis.call('SET', KEYS[6], '')
  end
end
-- No key is removed and made again below (see _FORGET): a slot being migrated would
-- refuse the second command, after the first.
local index = {}
for i = 7, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[5], id)
  index[#index + 1] = KEYS[i]
end
redis.call('ZADD', KEYS[1], ARGV[5], id)
redis.call('HSET', KEYS[2], id, table.concat(index, '\0'))
local fields = {
  'token', ARGV[4], 'past', past, 'data', ARGV[7], 'version', ARGV[8], 'created_at', ARGV[9]
}
if ARGV[6] ~= '' then
  fields[#fields + 1] = 'expires_at'
  fields[#fields + 1] = ARGV[6]
end
if ARGV[10] ~= '' then
  fields[#fields + 1] = 'runs'
  fields[#fields + 1] = ARGV[10]
end
redis.call('HSET', KEYS[4], unpack(fields))
local gone = {}
if ARGV[6] == '' then gone[#gone + 1] = 'expires_at' end
if ARGV[10] == '' then gone[#gone + 1] = 'runs' end
if #gone > 0 then redis.call('HDEL', KEYS[4], unpack(gone)) end
local count = tonumber(ARGV[10]) or 0
-- 'replace' sends every run from the first: they overwrite the list, trimmed below.
if ARGV[11] == 'replace' and count > 0 then redis.call('SET', KEYS[6], '') end
local length = redis.call('LLEN', KEYS[5])
for i = 15, #ARGV, 3 do
  local pos = tonumber(ARGV[i])
  if pos < length then
    redis.call('LSET', KEYS[5], pos, ARGV[i + 2])
  else
    redis.call('RPUSH', KEYS[5], ARGV[i + 2])
  end
  redis.call('SETRANGE', KEYS[6], pos * WIDTH, ARGV[i + 1])
end
if count > 0 and count < length then
  redis.call('LTRIM', KEYS[5], 0, count - 1)
  redis.call('SET', KEYS[6], redis.call('GETRANGE', KEYS[6], 0, count * WIDTH - 1))
end
if ARGV[6] ~= '' then
  -- Relative: an EXPIREAT would be read by the server's clock, which drops a session
  -- written by a machine whose clock is behind before that machine takes it for expired.
  redis.call('EXPIRE', KEYS[4], ARGV[13])
  if count > 0 then
    redis.call('EXPIRE', KEYS[5], ARGV[13])
    redis.call('EXPIRE', KEYS[6], ARGV[13])
  end
  redis.call('ZADD', KEYS[3], ARGV[6], id)
else
  redis.call('PERSIST', KEYS[4])
  if count > 0 then
    redis.call('PERSIST', KEYS[5])
    redis.call('PERSIST', KEYS[6])
  end
  redis.call('ZREM', KEYS[3], id)
end
-- Last: keys that these commands may remove.
if count == 0 then redis.call('DEL', KEYS[5], KEYS[6]) end
for _, key in ipairs(stale) do redis.call('ZREM', key, id) end
if fresh then return 2 end
return 1
""".replace("WIDTH", str(_WIDTH)).replace("PAST", str(PAST_TOKENS * 2 * TOKEN_BYTES))
_WRITE = _HEAD + _INDEXED + _allowed(False) + _WRITE_BODY
_WRITE_CHECKED = _HEAD + _INDEXED + _allowed(True) + _WRITE_BODY

# KEYS: header, digests; returns the stored header (see _HEAD).
_HEADER = _HEAD + "return head(KEYS[1], KEYS[2])\n"

# KEYS: header, runs, digests for each session; ARGV: for each session, the position of
# the first run to send (absent: 0; the reader remembers those before). Returns per session
# {data, those runs as one JSON array (false: not in the list), token, version, created_at,
# expires_at, digests}: a few strings, which the client parses much faster than a list; or
# the error of the first damaged session (see _HEAD).
_READ = (
    _HEAD
    + """
local out = {}
for i = 1, #KEYS, 3 do
  local h = head(KEYS[i], KEYS[i + 2])
  local data = redis.call('HGET', KEYS[i], 'data')
  local runs = false
  -- A list or digests without a header are what an evicted header left: the session is
  -- gone, as listings say, and a write removes them. Beside a header without a run
  -- count, they are damage.
  if h[5] or (data and redis.call('EXISTS', KEYS[i + 1], KEYS[i + 2]) > 0) then
    local bad = damaged(KEYS[i], KEYS[i + 1], KEYS[i + 2])
    if bad then return bad end
    local first = ARGV[#out + 1] or 0
    runs = '[' .. table.concat(redis.call('LRANGE', KEYS[i + 1], first, -1), ',') .. ']'
  end
  out[#out + 1] = {data, runs, h[1], h[2], h[3], h[4], h[5]}
end
return out
"""
)

# KEYS: the header of each session. Returns per session {data, token, version, created_at,
# expires_at} of its header: what a purge judges it by. No key of its runs is touched.
_STAMPS = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'data', 'token', 'version', 'created_at', 'expires_at')
end
return out
"""

# KEYS: all, idx, exp, the index to list; ARGV: key prefix, limit (-1: all), now ('' : keep
# expired), the mode's entity field. Returns {id, score, id, score... newest first; the
# expired ids it met, and those whose header is gone (evicted, or removed outside
# savegame)}, which the client removes with _FORGET_IDS, their keys declared (see _FORGET):
# this script changes nothing.
# An id is listed by a user's or entity's index only while {T}:idx names that index for it:
# a write that moves a session to another user removes its old entries by what {T}:idx
# names, so with {T}:idx evicted the old user's index keeps the id. Where {T}:idx has no
# entry for the id, the header's own user and entity decide.
_LIST = (
    _INDEXED
    + """
local limit = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local function holds(id)
  if KEYS[4] == KEYS[1] then return true end
  local keys = redis.call('HGET', KEYS[2], id)
  if keys then
    return string.find('\0' .. keys .. '\0', '\0' .. KEYS[4] .. '\0', 1, true) ~= nil
  end
  local found = indexed(ARGV[1], ARGV[1] .. 'h:' .. id, ARGV[4])
  if not found then return true end
  for _, key in ipairs(found) do
    if key == KEYS[4] then return true end
  end
  return false
end
local out, gone, start, found = {}, {}, 0, 0
while limit < 0 or found < limit do
  local page = redis.call('ZRANGE', KEYS[4], start, start + 199, 'WITHSCORES')
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local id = page[i]
    local expires = now and redis.call('ZSCORE', KEYS[3], id)
    if expires and tonumber(expires) <= now then
      gone[#gone + 1] = id
    elseif now and redis.call('EXISTS', ARGV[1] .. 'h:' .. id) == 0 then
      gone[#gone + 1] = id
    elseif (limit < 0 or found < limit) and holds(id) then
      out[#out + 1] = id
      out[#out + 1] = page[i + 1]
      found = found + 1
    end
  end
  start = start + 200
end
return {out, gone}
"""
)

# KEYS: all, idx, exp, then header, runs, digests of each id; ARGV: now ('': remove each),
# the mode's entity field, an owner ('': any), a version ('': any), the ids. With now, an id
# is removed only while it is expired then or its header is gone; with an owner, only while
# its header is gone, cannot be read, or names that user; with a version, only while its
# header is gone or at that version (1 when it has none). Returns the places (from 1) among
# the ids given of those there was something to remove for.
_FORGET_IDS_BODY = """
local now = tonumber(ARGV[1])
local owner = ARGV[3]
local version = tonumber(ARGV[4])
local ids, at, place = {}, {}, {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local k = 4 + (i - 5) * 3
  local go = true
  if now then
    local expires = redis.call('ZSCORE', KEYS[3], id)
    go = (expires and tonumber(expires) <= now) or redis.call('EXISTS', KEYS[k]) == 0
  end
  if go and owner ~= '' then
    local record = record_of(KEYS[k])
    go = not record or record['user_id'] == owner
  end
  if go and version and redis.call('EXISTS', KEYS[k]) == 1 then
    go = (tonumber(redis.call('HGET', KEYS[k], 'version')) or 1) == version
  end
  if go then
    -- The keys of an id left out (saved again meanwhile) are skipped, not taken by the next.
    ids[#ids + 1] = id
    at[#at + 1] = k
    place[#place + 1] = i - 4
  end
end
local hit = forget(ids, at, ARGV[2])
if hit.err then return hit end
local removed = {}
for _, n in ipairs(hit) do removed[#removed + 1] = place[n] end
return removed
"""
_FORGET_IDS = _INDEXED + _allowed(False) + _FORGET + _FORGET_IDS_BODY
_FORGET_IDS_CHECKED = _INDEXED + _allowed(True) + _FORGET + _FORGET_IDS_BODY

# KEYS: all, exp, idx; ARGV: batch, now ('': every session). Returns up to batch ids: every
# session's, or those expired at now. Every session is in {T}:all and {T}:idx: those of
# {T}:idx come once {T}:all is empty, so that a drop removes them with {T}:all evicted.
_SWEEP = """
local batch = tonumber(ARGV[1])
if ARGV[2] == '' then
  local ids = redis.call('ZRANGE', KEYS[1], 0, batch - 1)
  local cursor = '0'
  while #ids == 0 do
    local page = redis.call('HSCAN', KEYS[3], cursor, 'COUNT', batch)
    for i = 1, #page[2], 2 do ids[#ids + 1] = page[2][i] end
    cursor = page[1]
    if cursor == '0' then break end
  end
  return ids
end
return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, batch)
"""


# KEYS: {P}:shards, {P}:mode; ARGV: the shard count to record when none is ('': record
# nothing), the mode to record when none is ('': none). Returns {shards, mode}, each nil when
# none is recorded. One script, so that of two first writers of different modes one records
# its mode and the other finds it.
# Read first: a store whose layout is recorded is opened without a write command, which a
# server at its maxmemory (noeviction) would refuse, so that reads, listings and removals
# (which free memory) still work there.
_LAYOUT = """
local shards = redis.call('GET', KEYS[1])
local mode = redis.call('GET', KEYS[2])
if ARGV[1] == '' or (shards and (mode or ARGV[2] == '')) then return {shards, mode} end
if not shards then
  shards = ARGV[1]
  redis.call('SET', KEYS[1], shards)
end
if not mode and ARGV[2] ~= '' then
  mode = ARGV[2]
  redis.call('SET', KEYS[2], mode)
end
return {shards, mode}
"""

# KEYS: {T}:all; ARGV: key prefix, how many. Returns the data of the newest sessions'
# headers: what tells the mode of a store an earlier savegame made, which recorded none.
_SAMPLE = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local data = redis.call('HGET', ARGV[1] .. 'h:' .. id, 'data')
  if data then out[#out + 1] = data end
end
return out
"""

# ARGV: a key of each kind under one tag: all, idx, exp, a header, runs, digests, and user,
# entity and user-and-entity indexes. Returns 'COMMAND key' for the first command the
# scripts that change sessions run that the server's ACL denies the user on one of them, nil
# when it denies none (or, before Redis 7.0, cannot tell): the lists of write_needs and
# forget_needs, as the scripts check them. Runs no command on them, and declares none of
# them as keys: a call declaring a key the user may only read is refused.
_ACL_PROBE = (
    _DENIED
    + """
local indexes = {ARGV[7], ARGV[8], ARGV[9]}
return first_denied(write_needs(ARGV, 'x', indexes))
  or first_denied(forget_needs(ARGV, {4}, indexes, 'x'))
"""
)

_SCRIPTS = (
    _WRITE,
    _WRITE_CHECKED,
    _HEADER,
    _READ,
    _STAMPS,
    _LIST,
    _FORGET_IDS,
    _FORGET_IDS_CHECKED,
    _SWEEP,
    _LAYOUT,
    _SAMPLE,
    _ACL_PROBE,
)


_WIRE = threading.local()
"""``sent``: whether the script call running on this thread has been handed, whole, to
the operating system on a connection of a client savegame made (see :func:`_marking`)."""


@cache
def _marking(base: Any) -> type:
    """``base``, a redis-py connection class, marking on :data:`_WIRE` each script call it
    has sent whole.

    A call that failed before it was sent (the connection was dead and no new one could
    be made) cannot have been made, so sending it again is not a resending whose outcome
    must be found out. redis-py raises the same errors for both cases.
    """

    def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
        base.send_command(self, *args, **kwargs)
        if args and args[0] in ("EVALSHA", "EVAL"):
            _WIRE.sent = True

    return type(f"Marking{base.__name__}", (base,), {"send_command": send_command})


def _driver() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc
    return redis


def _check_server(
    host: object, port: object, ssl: object, username: object, password: object
) -> None:
    """Refuses the arguments naming a Redis server and how to log in that redis-py would
    take otherwise than meant, or refuse only at the first call.

    Raises:
        InvalidIdentifierError: naming the argument and what it must be (never a secret's
            value, which may be the password).
    """
    if not isinstance(host, str) or not host:
        raise InvalidIdentifierError(f"Redis host must be a host name or address, not {host!r}")
    if type(port) is not int or not 1 <= port <= 65535:
        raise InvalidIdentifierError(
            f"Redis port {port!r} must be a whole number (int) from 1 to 65535"
        )
    if type(ssl) is not bool:
        # A string ("false", from an environment variable) is true: TLS to a server that
        # speaks none timed out at the first call, as an unreachable server.
        raise InvalidIdentifierError(f"ssl must be True or False, not {ssl!r}")
    for name, secret in (("username", username), ("password", password)):
        if secret is not None and not isinstance(secret, str):
            # redis-py sent an int as its digits, and refused a list only at the first call.
            raise InvalidIdentifierError(
                f"Redis {name} must be a str or None, not {type(secret).__name__}"
            )


class _Resharded(BackendUnavailableError):
    """A write refused because the store was made again over other shards since the storage
    read its layout (see ``_WRITE``); nothing was written."""


class RedisStorage(Storage):
    """Sessions of one mode under one key prefix of a Redis server or Redis Cluster.

    The key layout, and how a store maps to cluster slots, is in this module's docstring.
    Nothing is sent to the server until the first call that needs it.

    Args:
        prefix: the store's key prefix; letters, digits and ``_ - . :`` (see :data:`PREFIX`).
            Stores with different prefixes never see each other's sessions, ``P:sub`` and
            ``P`` included.
        host: server host name or address.
        port: server port.
        db: database number (a cluster has only 0).
        password: server password, if it needs one.
        mode: the session mode.
        ssl: connect with TLS, checking the server's certificate against the system's
            certificate authorities (or ``ssl_ca_certs``) and its name against ``host``.
        expire: seconds a session lives after its last write (Redis expires it natively).
        url: a ``redis://``, ``rediss://`` or ``redis+cluster://`` URL (see :func:`from_url`)
            instead of host, port and db; its query may hold ``ssl``, ``ssl_ca_certs``,
            ``socket_timeout`` and ``connect_timeout``. ``password``, ``username``,
            ``ssl=True`` and the timeouts given with it are used when the URL has none, and
            refused when it has another.
        client: a ready ``redis.Redis`` or ``redis.cluster.RedisCluster``; the storage
            neither configures nor closes it.
        username: the ACL user name, if the server uses ACLs.
        ssl_ca_certs: a PEM file of the certificate authorities to trust instead of the
            system's, for a server whose certificate a private authority signed; read at
            the first connection, where one that cannot be read raises StorageError.
        socket_timeout: seconds to wait for a reply before the call fails; None: the URL's,
            or :data:`SOCKET_TIMEOUT`.
        connect_timeout: seconds to wait for a connection; None: the URL's, or
            :data:`CONNECT_TIMEOUT`.
        shards: how many cluster slots the store spreads over (see the module docstring);
            fixed by the first storage that writes to the store, None: whatever it was
            fixed to (1 for a new store).
        cache_bytes: how many bytes of runs the storage may remember of its recent
            sessions (:mod:`savegame.storage.known`); 0 remembers none.

    Raises:
        InvalidIdentifierError: for a prefix that does not match :data:`PREFIX`, a ``host``
            that is not a non-empty string, a ``url`` that is not a string, a ``username``
            or ``password`` that is neither a string nor None, an ``ssl`` that is not a
            bool, a malformed URL or one with an unknown option, a ``url`` with ``host``,
            ``port`` or ``db`` other than their defaults, or with a ``username``,
            ``password``, timeout or ``ssl_ca_certs`` other than the URL's (or ``ssl=True``
            where it says false), a port outside 1 to 65535, a negative database, a
            ``socket_timeout`` or ``connect_timeout`` that is not a number of seconds above
            0, or (at first use) ``shards`` that differ from those the store was made with;
            for ``shards`` outside 1 to :data:`MAX_SHARDS`, or ``ssl_ca_certs`` empty or
            without TLS.
        MissingDependencyError: when redis-py is not installed.
    """

    capabilities = frozenset({"persistent", "processes", "key_order", "cache_bytes"})

    def __init__(
        self,
        prefix: str,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        mode: Mode | None = "agent",
        ssl: bool = False,
        expire: int | None = None,
        url: str | None = None,
        *,
        client: Any = None,
        username: str | None = None,
        ssl_ca_certs: str | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        shards: int | None = None,
        cache_bytes: int = DEFAULT_BYTES,
    ) -> None:
        super().__init__(mode, expire)
        check_name(prefix, "Redis key prefix", PREFIX, PREFIX_ALLOWED)
        if socket_timeout is not None:
            socket_timeout = check_seconds(socket_timeout, "socket_timeout")
        if connect_timeout is not None:
            connect_timeout = check_seconds(connect_timeout, "connect_timeout")
        if shards is not None and (type(shards) is not int or not 1 <= shards <= MAX_SHARDS):
            raise InvalidIdentifierError(
                f"shards must be a whole number from 1 to {MAX_SHARDS}, not {shards!r}"
            )
        self.prefix = prefix
        self._wanted = shards
        self._shard_tags: list[str] = []
        self._recorded = False
        self._moded = False
        self._redis = _driver()
        errors = self._redis.exceptions
        self._driver_errors = (errors.RedisError, errors.RedisClusterException)
        # ClusterError: redis-py's "TTL exhausted", after the answers of a slot migrating
        # (TRYAGAIN, for a script whose keys are on both nodes for now) for about 0.4 s.
        self._resend_on = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.ClusterError,
            errors.TryAgainError,
            errors.SlotNotCoveredError,
        )
        # Answers of a server that did not run the call: CLUSTERDOWN (a failover under way,
        # a slot no master serves), LOADING, and redis-py's "TTL exhausted" after as many
        # MOVED, ASK or TRYAGAIN answers (a slot migrating).
        self._refusals = (errors.ResponseError, errors.ClusterError, errors.BusyLoadingError)
        self._keys = "{" + prefix + "}:"
        self._given = client is not None
        self._client: Any = client
        # Registered once: a script object is tied to no client (each call names its own).
        self._scripts: dict[str, Any] = {}
        self._ready = False
        self._marks_sent = False
        # Whether the server's ACL restricts the user on the store's keys: the scripts that
        # change sessions then check each command first (see _acl_probe).
        self._acl_limited = False
        self._known = KnownSessions(cache_bytes)
        self._run_codec = RunEncoder(self._known, dumps, _digest)
        self._guess_new = True
        self._lock = threading.Lock()
        # Calls in progress on the client, which close() waits for (see _connected).
        self._calls = 0
        self._closing = False
        self._idle = threading.Condition(self._lock)
        _check_server(host, port, ssl, username, password)
        options: dict[str, Any] = {
            "username": username,
            "password": password,
            "ssl": ssl,
            "ssl_ca_certs": ssl_ca_certs,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "client_name": f"savegame:{prefix}",
        }
        nodes, db, options, cluster = _server(url, host, port, db, options)
        if client is not None:
            self._address = _describe(client)
            self._connect: Callable[[], Any] = lambda: client
        elif cluster:
            self._address = "Redis Cluster at " + ",".join(_hostport(h, p) for h, p in nodes)
            self._connect = lambda: self._cluster(nodes, options)
        else:
            ((host, port),) = nodes
            self._address = f"Redis at {_hostport(host, port)}/{db}"
            self._connect = lambda: self._standalone(host, port, db, options)

    # -- connections and the one place driver errors become savegame errors ---------------

    def _retry(self, retries: int = 0) -> Any:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # savegame retries itself (see _call), so that a write knows when it is sent again.
        return Retry(NoBackoff(), retries)

    def _standalone(self, host: str, port: int, db: int, options: dict[str, Any]) -> Any:
        self._check_ca_certs(options["ssl_ca_certs"])
        if options["ssl"]:
            # redis-py before 6 checks no host name unless asked: the docstring promises it.
            options = {**options, "ssl_check_hostname": True}
        client = self._redis.Redis(host=host, port=port, db=db, retry=self._retry(), **options)
        pool = client.connection_pool
        pool.connection_class = _marking(pool.connection_class)
        return client

    def _cluster(self, nodes: list[tuple[str, int]], options: dict[str, Any]) -> Any:
        """A cluster client whose connections to every node, those found later included,
        are of a :func:`_marking` class.

        The first node is given as a URL: redis-py makes a node's client from a connection
        pool built on the connection options (``connection_class`` among them) only for a
        cluster named by URL. For one named by ``startup_nodes`` alone, redis-py before 8.2
        makes it as ``Redis(host, port, **options)``, which takes no ``connection_class``
        and fails every call. Patching the pools of the nodes found at start was rejected:
        a node the cluster adds later (a failover, a resharding) would get a plain pool.
        A pool takes no ``ssl``: TLS is the connection class, which takes the ``ssl_*``
        options a plain one refuses.
        """
        redis = self._redis
        self._check_ca_certs(options["ssl_ca_certs"])
        options = dict(options)
        if options.pop("ssl"):
            base = redis.SSLConnection
            # redis-py before 6 checks no host name unless asked: the docstring promises it.
            options["ssl_check_hostname"] = True
        else:
            base = redis.Connection
            del options["ssl_ca_certs"]
        # Made with redis-py's retries: making the client asks the first master it lists
        # (that of slot 0) for its commands, and only a retry asks another when that one is
        # away, which failed every new storage, of every store, until it was back.
        old = redis.VERSION < (6,)
        if old:
            # redis-py 5 sends a failed cluster call again on its own, unseen by savegame
            # and by the ``retry`` that later versions obey (see _retry): turned off below.
            options["cluster_error_retry_attempts"] = CONNECT_RETRIES
        (host, port), *others = nodes
        first = f"[{host}]" if ":" in host else host
        client = redis.cluster.RedisCluster(
            url=f"redis://{first}:{port}",
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in others],
            retry=self._retry(0 if old else CONNECT_RETRIES),
            connection_class=_marking(base),
            # redis-py's default refuses a cluster with any slot no master serves, which a
            # cluster run with cluster-require-full-coverage no keeps serving the others.
            require_full_coverage=False,
            **options,
        )
        if old:
            client.cluster_error_retry_attempts = 0
        else:
            client.set_retry(self._retry())
        return client

    def _check_ca_certs(self, path: str | None) -> None:
        """Refuses an ``ssl_ca_certs`` file that cannot be read as certificates (None: none).

        redis-py reads it at each connection and reports it as an unreachable server whose
        error names no file ("No such file or directory"), which no wait would mend. It is
        checked when the client is made, not when the storage is: a storage is made without
        touching anything.

        Raises:
            StorageError: naming the file and the address.
        """
        if path is None:
            return
        try:
            stdlib_ssl.create_default_context(cafile=path)
        except OSError as exc:
            raise StorageError(
                f"{self._address}: the ssl_ca_certs file {path!r} cannot be read as PEM "
                f"certificates: {exc.strerror or exc}"
            ) from exc

    def _denied(self, exc: Exception) -> StorageError | None:
        """The error of a call the server's ACL refused the user before it ran, on a key it
        names (a command a script runs is refused by the script: see :meth:`_refusal`);
        None for another error."""
        if isinstance(exc, self._redis.exceptions.NoPermissionError) and "keys" in str(exc):
            # A key the call names: Redis refuses the script before it runs, naming no key.
            return StorageError(
                f"{self._address} denies the user a key under {self._keys} that savegame "
                f"reads or writes ({exc}); nothing was changed: grant the user every key "
                f"there (~{self._keys}*) in its ACL"
            )
        return None

    def _mapped(self, exc: Exception) -> StorageError:
        """The savegame error for a redis-py error: the one place they are translated."""
        errors = self._redis.exceptions
        if isinstance(exc, errors.ResponseError) and str(exc).startswith("SAVEGAME-"):
            kind, _, said = str(exc).partition(" ")
            refused = self._refusal(kind, said)
            if refused is not None:
                return refused
        denied = self._denied(exc)
        if denied is not None:
            return denied
        if isinstance(exc, errors.ResponseError) and "non local key" in str(exc):
            # A script met a key of its slot that another node holds now (see _FORGET):
            # it stopped before changing anything.
            return BackendUnavailableError(
                f"{self._address} is moving the slot of {self._keys} between nodes; nothing "
                f"was written, try again when it is done: {exc}"
            )
        moving = isinstance(exc, (errors.ClusterError, errors.TryAgainError))
        if moving and not isinstance(exc, errors.ClusterDownError):
            # redis-py's "TTL exhausted": TRYAGAIN (or MOVED, ASK) answered each sending.
            return BackendUnavailableError(
                f"{self._address} is moving the slot of a key under {self._keys} between "
                f"nodes (Redis answered TRYAGAIN until savegame gave up); nothing was "
                f"written, try again when it is done: {exc}"
            )
        if isinstance(exc, errors.ResponseError) and "WRONGTYPE" in str(exc):
            return CorruptSessionError(
                f"a key under {self._keys} in {self._address} is not of the type savegame "
                f"keeps there: it was changed outside savegame, and the call stopped there: {exc}"
            )
        if isinstance(exc, errors.OutOfMemoryError):
            # A script stops at its first write command a server at its maxmemory
            # (noeviction) refuses, before any change; removals free memory.
            return BackendUnavailableError(
                f"{self._address} is full (maxmemory): nothing was written; delete sessions "
                f"or raise maxmemory: {exc}"
            )
        if self._refused(exc):
            # A ConnectionError to redis-py, but no later call would fare better: not one to
            # wait out, as BackendUnavailableError says.
            return StorageError(f"{self._address} refused the credentials given: {exc}")
        unavailable = (errors.ConnectionError, errors.TimeoutError, errors.ClusterError)
        if isinstance(exc, unavailable):
            return BackendUnavailableError(f"{self._address} is unavailable: {exc}")
        busy = (errors.ReadOnlyError, errors.TryAgainError, errors.RedisClusterException)
        if isinstance(exc, busy) or (
            # Another client's script has run past busy-reply-threshold: the command was
            # not run, and the server serves again when the script ends.
            isinstance(exc, errors.ResponseError) and str(exc).startswith("BUSY ")
        ):
            return BackendUnavailableError(f"{self._address} cannot serve: {exc}")
        return StorageError(f"{self._address} refused the command: {exc}")

    def _refusal(self, kind: str, said: str) -> StorageError | None:
        """The error of a script that refused, answering ``kind`` (``SAVEGAME-...``) and
        ``said``; None for a refusal that has no error of its own."""
        if kind == "SAVEGAME-DAMAGED":
            count, length, header = said.split(" ", 2)
            session_id = header.partition("}:h:")[2]
            session = f"session {session_id!r} under {self._keys} in {self._address}"
            if count == "?":
                return CorruptSessionError(
                    f"{session} has a run count that is not a number: its header was changed "
                    "outside savegame; nothing was read or written"
                )
            should = "no list of runs" if count == "nil" else f"{count} runs"
            return CorruptSessionError(
                f"{session} should have {should}, and its list has {length} or its digests "
                "another number: its keys were changed outside savegame (by a "
                "maxmemory-policy that evicts keys, say); nothing was read or written"
            )
        if kind == "SAVEGAME-DENIED":
            command, key = said.split(" ", 1)
            return StorageError(
                f"{self._address} denies the user {command} on {key!r}, which savegame "
                f"runs on the keys under {self._keys}; nothing was changed: grant it in the "
                "user's ACL (or use a user that has it)"
            )
        if kind == "SAVEGAME-MODE":
            # The store was made again in another mode since this storage read its layout
            # (see _WRITE): read again, the layout refuses every later call, as it does
            # those of a storage opened now.
            self._mode_changed()
            return self._kept_by_another(
                f"the store {self.prefix!r} in {self._address}",
                said.split(" ", 1)[0],
                f"as {self._keys}mode records; nothing was written",
                "under another prefix",
            )
        if kind == "SAVEGAME-SHARDS":
            # Made again over other shards since this storage read its layout (see _WRITE):
            # the layout is read again by the next call.
            self._mode_changed()
            return _Resharded(
                f"the store {self.prefix!r} in {self._address} was made again over "
                f"{said.split(' ', 1)[0]} shards since this storage read its layout of one "
                "shard; nothing was written"
            )
        return None

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Runs ``fn(client)``, connecting first if needed, with driver errors mapped.

        On a client savegame made, a call whose connection failed, or that the cluster
        could not serve, runs again a few times after a short, growing pause
        (:func:`~savegame.storage.base.with_retries`): a server that is down fails the call
        within seconds.
        ``fn`` may have reached the server before it failed. A client given to the storage
        retries as it was set up to.
        """

        def attempt() -> T:
            client = self._connected()
            try:
                return fn(client)
            except self._redis.exceptions.SlotNotCoveredError:
                if not self._given:
                    self._reread_slots(client)
                raise
            finally:
                with self._lock:
                    self._calls -= 1
                    if not self._calls:
                        self._idle.notify_all()

        try:
            with HOLDING:
                return with_retries(attempt, self._passing)
        except self._driver_errors as exc:
            raise self._mapped(exc) from exc

    def _reread_slots(self, client: Any) -> None:
        """Has a cluster client read again which master serves each slot.

        redis-py reads it when it starts and then on MOVED and on failures, but finds a
        slot that no master served when it read it (a cluster run with
        ``cluster-require-full-coverage no``) without asking anyone: the slot stayed
        unserved for the client after a master took it again, until the storage was
        closed. What the reading raises is left for the call tried again to meet.
        """
        with contextlib.suppress(*self._driver_errors):
            client.nodes_manager.initialize()

    def _passing(self, exc: Exception) -> bool:
        """Whether a call that failed with ``exc`` is tried again (see :meth:`_call`): a
        connection that failed may work on the next try, credentials refused never do."""
        return not self._given and isinstance(exc, self._resend_on) and not self._refused(exc)

    def _refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is, or was raised from, the server refusing the credentials (a
        cluster client reports it as a node it could not connect to)."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, self._redis.exceptions.AuthenticationError):
                return True
            seen = seen.__cause__
        return False

    def _connected(self) -> Any:
        """The client, made (and the store's layout read) on first use and after
        :meth:`close`, counted in use until the call on it ends (see :meth:`_call`).

        A call does not start while :meth:`close` waits for those in progress: closing the
        client under a call would fail it with whatever redis-py meets on a connection
        gone (a raw AttributeError among them), or hand it another command's reply.
        """
        with self._lock:
            while self._closing:
                self._idle.wait()
            if not self._ready:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
                if not self._scripts:
                    # Registering computes the SHA1 locally; redis-py loads the script on
                    # the server the first time EVALSHA finds it missing.
                    self._scripts = {s: client.register_script(s) for s in _SCRIPTS}
                _WIRE.sent = False
                self._layout(client, self._scripts, False)
                self._acl_limited = self._acl_probe(client)
                # Where the client is not one savegame made, or redis-py sends another
                # way, nothing marks a call sent: every sending then counts.
                self._marks_sent = bool(_WIRE.sent)
                self._ready = True
            self._calls += 1
            return self._client

    def _acl_probe(self, client: Any) -> bool:
        """Whether the server's ACL denies the user a command that the scripts changing
        sessions run, on a key of some kind under the store's prefix.

        A script stopped by a command the user may not run keeps what it changed before;
        checking every command of every call first costs the server about a fifth more time
        a write, so the scripts check only for a user found restricted here, once a
        connection. A rule that tells keys of one kind apart (by session id, say) is not
        seen by this probe.

        On a cluster the probe goes to the master of the store's own keys: a script that
        declares no key is sent by redis-py to the master of a random slot, which may be
        one that is away while the store's are served.
        """
        tag = self._keys
        keys = [
            *self._store_keys(tag),
            *(str(_key(tag, kind, "_")) for kind in "hrd"),
            *self._index_keys(tag, "_", "_"),
        ]
        if hasattr(client, "get_node_from_key"):
            client = client.get_redis_connection(client.get_node_from_key(keys[0]))
        return self._scripts[_ACL_PROBE](keys=[], args=keys, client=client) is not None

    def _layout(
        self,
        client: Any,
        scripts: dict[str, Any],
        record: bool,
        hint: str | None = None,
        count: int | None = None,
    ) -> None:
        """Reads the store's shard count and mode (with ``record``, recording ours first
        where the store has none yet) and the slots it makes; a store without a count is
        read as of ours.

        A store made by an earlier savegame has its count but no mode: it takes the mode of
        its sessions (:meth:`_mode_found`; ``hint``: the mode of sessions that tell it
        elsewhere), or ours when they tell none, on its first write by this savegame.
        ``count``: the shard count this storage has written by, which the store must have
        (None: ``shards``).

        Raises:
            InvalidIdentifierError: when the store is spread over other ``shards``.
            CorruptSessionError: when the store keeps another mode's sessions.
        """
        keys = [self._keys + "shards", self._keys + "mode"]
        found, mode = scripts[_LAYOUT](keys=keys, args=["", ""], client=client)
        tags = self._tags_of(found, count)
        why = f"as {keys[1]} records"
        if mode is None and (record or found is not None):
            # Not only before a write: a removal by a storage of another mode, which names
            # no mode, would remove the sessions of a store an earlier savegame made.
            kept = self._mode_found(client, scripts, tags) or hint or self.mode
            if kept != self.mode:
                # Nothing is recorded: the store stays as it is, like any refused call.
                mode, why = kept, "its sessions are, and no mode is recorded"
            elif record:
                found, mode = scripts[_LAYOUT](keys=keys, args=[len(tags), kept], client=client)
                # Another storage may have recorded its count since the read above: the
                # store's is the one that came back.
                tags = self._tags_of(found, count)
        if mode is not None and mode not in (self.mode, self.mode.encode()):
            if _text(mode, "replace") not in MODES:
                raise CorruptSessionError(
                    f"{keys[1]} in {self._address} holds {mode!r}, which is no mode: it was "
                    f"changed outside savegame; set it back to the mode of the store's sessions"
                )
            mode = _text(mode)
            raise self._kept_by_another(
                f"the store {self.prefix!r} in {self._address}", mode, why, "under another prefix"
            )
        self._recorded = found is not None
        self._moded = mode is not None
        self._shard_tags = tags

    def _tags_of(self, found: Any, count: int | None = None) -> list[str]:
        """The key prefixes of the slots of a store whose recorded shard count is ``found``
        (None: none is, and the store is read as of ours), which must be ``count`` (None:
        ``shards``).

        Raises:
            InvalidIdentifierError: when the store is spread over other ``shards``.
        """
        wanted = self._wanted if count is None else count
        shards = (wanted or 1) if found is None else self._recorded_shards(found)
        if found is not None and wanted is not None and shards != wanted:
            raise InvalidIdentifierError(
                f"the store {self.prefix!r} in {self._address} is spread over {shards} "
                f"shards, not {wanted}: open it with shards={shards} (or None)"
            )
        return [self._keys] if shards == 1 else [f"{{{self.prefix}#{i}}}:" for i in range(shards)]

    def _recorded_shards(self, found: Any) -> int:
        """The shard count ``{P}:shards`` holds (``found``).

        Raises:
            CorruptSessionError: for anything savegame never records there: no session
                could be found by it (a count of 0 left every call failing on a division).
        """
        text = found.decode("ascii", "replace") if isinstance(found, bytes) else str(found)
        if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_SHARDS:
            return int(text)
        raise CorruptSessionError(
            f"{self._keys}shards in {self._address} holds {found!r}, not a shard count from 1 "
            f"to {MAX_SHARDS}: it was changed outside savegame; set it back to the store's count"
        )

    def _mode_found(self, client: Any, scripts: dict[str, Any], tags: list[str]) -> str | None:
        """The mode the newest sessions of each slot tell (see :meth:`_mode_among`)."""

        def headers() -> Iterable[Record]:
            for tag in tags:
                for data in scripts[_SAMPLE](keys=[tag + "all"], args=[tag, SAMPLE], client=client):
                    with contextlib.suppress(ValueError):
                        yield loads(data)

        return self._mode_among(headers())

    def _settle(self, record: bool, hint: str | None = None, count: int | None = None) -> None:
        """Reads the store's layout again (with ``record``, recording it if not yet)."""

        def settle(client: Any) -> None:
            with self._lock:
                self._layout(client, self._scripts, record, hint, count)

        self._call(settle)

    def _tag(self, session_id: str, tags: list[str] | None = None) -> str:
        """The key prefix of the slot ``session_id`` lives in (see the module docstring),
        of ``tags`` (None: the store's)."""
        tags = self._tags() if tags is None else tags
        return tags[0] if len(tags) == 1 else tags[zlib.crc32(session_id.encode()) % len(tags)]

    def _tags(self) -> list[str]:
        """The key prefixes of every slot of the store (connecting, to learn how many; while
        the store is not there, asking again, see the module docstring)."""
        if not self._ready:
            self._call(lambda _: None)
        elif not self._recorded:
            self._settle(False)
        return self._shard_tags

    def _made(self, hint: str | None = None) -> bool:
        """Records the store's layout and mode, if this storage has not found them recorded:
        before its first write, which makes the store (``hint``: see :meth:`_layout`).
        Returns whether it read the layout.

        Raises:
            InvalidIdentifierError: when the store is spread over other ``shards``.
            CorruptSessionError: when the store keeps another mode's sessions.
        """
        self._tags()
        if self._recorded and self._moded:
            return False
        self._settle(True, hint)
        return True

    def _script(self, source: str, keys: list[Any], args: list[Any]) -> Any:
        return self._call(lambda c: self._scripts[source](keys=keys, args=args, client=c))

    def close(self) -> None:
        """Closes the connections this storage opened (a client it was given stays open),
        once the calls other threads have in progress on them end; a call made after it
        connects again."""
        with self._lock:
            self._closing = True
            try:
                while self._calls:
                    self._idle.wait()
            finally:
                self._closing = False
                self._idle.notify_all()
            client, self._client = self._client, None
            self._ready = False
        if client is not None and not self._given:
            try:
                client.close()
            except self._driver_errors as exc:
                raise self._mapped(exc) from exc

    # -- keys -------------------------------------------------------------------------------

    @staticmethod
    def _store_keys(tag: str) -> list[str]:
        return [tag + "all", tag + "idx", tag + "exp"]

    @staticmethod
    def _index_keys(tag: str, user_id: str | None, entity_id: str | None) -> list[str]:
        keys = []
        if user_id is not None:
            keys.append(f"{tag}u:{user_id}")
        if entity_id is not None:
            keys.append(f"{tag}e:{entity_id}")
        if user_id is not None and entity_id is not None:
            keys.append(f"{tag}ue:{len(user_id.encode())}:{user_id}{entity_id}")
        return keys

    # -- the contract ---------------------------------------------------------------------

    def create(self) -> None:
        """Records the store's shard count, which makes the store there
        (:meth:`table_exists`), as its first write would; nothing else needs making.

        Raises:
            BackendUnavailableError: when the server cannot be reached.
            InvalidIdentifierError: when the store is spread over other ``shards``.
            CorruptSessionError: when the store keeps another mode's sessions.
        """
        self._call(lambda c: c.ping())
        self._made()

    def table_exists(self) -> bool:
        """Whether anything of the store is stored: the record of its shard count (see
        :meth:`create`), or the index of one of its slots (a store dropped by another storage
        and written by this one since has only that). Sessions of the original layout count
        once :meth:`upgrade_schema` has moved them.

        Raises:
            BackendUnavailableError: when the server cannot be reached.
            CorruptSessionError: when the store keeps another mode's sessions.
        """
        if self._call(methodcaller("exists", self._keys + "shards")):
            return True
        return any(self._call(methodcaller("exists", tag + "all")) for tag in self._tags())

    def drop(self) -> None:
        """Removes every key under this prefix, in batches, and nothing else.

        The record of how many shards the store has, and of its mode, goes too: other
        storage objects still open keep what they read, so drop a sharded store only when
        nothing else uses it. A storage still open whose store is made again in another
        mode is refused at its next write in a store of one shard (see _WRITE); in a
        sharded one, write another mode there only when nothing of this mode writes there
        any more.

        Raises:
            CorruptSessionError: when the store keeps another mode's sessions; nothing is
                removed.
        """
        for tag in self._tags():
            self._sweep(tag, "")
        for key in ("shards", "mode"):
            self._call(methodcaller("delete", self._keys + key))
        with self._lock:
            # The next call reads the layout again, and the next write records it (this
            # storage's shards, or one): see _tags and _made.
            self._forget_layout()

    def _forked(self) -> None:
        # redis-py's pools make their own connections in a child; the count of calls in
        # progress, which close() waits for, starts again from none.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls = 0
        self._closing = False
        self._known.forked()

    def _mode_changed(self) -> None:
        # The layout was read, and found of the mode before: read again, it refuses this
        # mode where the store keeps another, as it does a storage opened in this mode.
        with self._lock:
            self._forget_layout()
            self._ready = False

    def _forget_layout(self) -> None:
        """Forgets that the layout is recorded, and the sessions remembered (with
        :attr:`_lock` held)."""
        self._known.clear()
        self._recorded = False

    def upgrade_schema(self, *, original_prefix: str | None = None) -> None:
        """Moves sessions written by the original ``RedisStorage`` into this layout.

        The original kept each session as one JSON string under ``<prefix>:<session id>``.
        This is the one call that scans the keyspace (``SCAN``, in steps, once): a key moves
        when it is a string holding a JSON object whose ``session_id`` makes up the key
        exactly, so the keys of a longer prefix (``<prefix>:sub:<id>``) and foreign strings
        stay where they are. Each session is stored with its times kept (as by
        :meth:`restore`) before its old key is deleted, so an interrupted upgrade loses
        nothing and can simply be run again: a session stored already (moved by an upgrade
        cut short before it deleted the old key, and maybe saved since) is not overwritten
        by the old copy, whose key is then deleted. A session the original stored without
        ``created_at`` (its ``Agent`` set none) takes its ``updated_at`` as ``created_at``.
        A key the original stored with a TTL (its ``expire``) moves with the time it had
        left, to the second below, or this storage's ``expire`` when that is shorter; one
        with less than a second left is left to expire; one without a TTL gets this
        storage's ``expire``, as a write does.

        Only this mode's sessions move: a prefix keeps one mode. The original let a prefix
        hold several (an agent's and a team's storage given one prefix); the sessions of
        the other modes stay under their old keys, and a storage of their mode under a
        prefix of its own moves them there, given ``original_prefix``.

        Args:
            original_prefix: the prefix the original stored the sessions under, when not
                this storage's: this mode's sessions move from there to this prefix, and
                the others stay.

        Raises:
            SerializationError: after moving the others, naming the old sessions savegame
                cannot store, those of no mode, and (from this storage's own prefix, which
                keeps this mode now) those of another mode, saying how to move them; they
                stay in place.
            CorruptSessionError: when the store keeps another mode's sessions, or has none
                yet and the sessions to move from its own prefix are another mode's;
                nothing is moved.
            InvalidIdentifierError: for an ``original_prefix`` that is not a non-empty
                string, or holds NUL or a lone surrogate.
            BackendUnavailableError: when the server cannot be reached.
        """
        # The original took any prefix (spaces, braces, glob characters): one it wrote
        # under is only read, so only what no key can be named by is refused.
        source = self.prefix if original_prefix is None else original_prefix
        check_id(source, "original Redis key prefix")
        own = source == self.prefix
        old = self._call(lambda c: list(_original_keys(c, source)))
        # Made, as a first upgrade of a deployment wants (the SQL backends make their tables),
        # in the mode of the sessions to move when the store has none yet: an upgrade in the
        # wrong mode is refused before it makes the store, which the right one can then make.
        # Sessions of another prefix tell nothing of this one.
        self._made(self._mode_among(self._original(k, source) for k in old) if own else None)
        refused: list[str] = []
        others: dict[str, list[str]] = {}
        for key in old:
            self._move_original(key, source, refused, others)
        left = len(refused)
        if own:
            left += sum(map(len, others.values()))
            refused += [self._left_to_move(mode, keys) for mode, keys in sorted(others.items())]
        if refused:
            raise SerializationError(
                f"upgrade_schema() left {left} key(s) of the original layout in place in "
                f"{self._address}, and moved the others: " + "; ".join(refused)
            )

    def awaiting_upgrade(self) -> str | None:
        """Whether the original's sessions wait under this prefix for :meth:`upgrade_schema`
        to move them: it looks for one, with ``SCAN``, in a server of :data:`LOOK_LIMIT`
        keys or fewer (None in a larger one).

        Raises:
            BackendUnavailableError: when the server cannot be reached.
        """
        if self._call(methodcaller("dbsize")) > LOOK_LIMIT:
            return None
        prefix = self.prefix
        if not self._call(
            lambda c: any(self._original(k, prefix) is not None for k in _original_keys(c, prefix))
        ):
            return None
        return f"sessions of the original RedisStorage under the prefix {prefix!r}"

    def _move_original(
        self, key: Any, source: str, refused: list[str], others: dict[str, list[str]]
    ) -> None:
        """Moves the session the original stored under ``key`` with prefix ``source`` (see
        :meth:`upgrade_schema`), or adds why it stays to ``refused``, or its key to those of
        its mode in ``others``, when it is another mode's."""
        # Read before the value: a key that expires in between is then not moved.
        deadline = self._deadline(key)
        if deadline is not None and deadline <= time.time():
            # Less than a second left: Redis removes it as the original would have.
            return
        data = self._original(key, source)
        if data is None:
            return
        if self.mode not in modes_of(data):
            other = self._other_mode(data)
            if other is not None:
                others.setdefault(other, []).append(_text(key))
                return
            # Values under names no mode has would be lost with the old key.
            extra = {
                k
                for k, v in data.items()
                if k not in self.spec.fields and k != "expires_at" and v is not None
            }
            refused.append(f"{_text(key)!r}: {self._of_another_mode(data, extra)}")
            return
        if data.get("created_at") is None and data.get("updated_at") is not None:
            # The original's Agent set no created_at and its upsert kept the None: its
            # last write is the best time known, and the same on every run, so a run
            # after an interrupted one finds the session it moved (see below).
            data = {**data, "created_at": data["updated_at"]}
        session = self.spec.session_class.from_dict(data)
        assert session is not None
        try:
            # Only where the session is not stored yet: one stored already was moved by
            # an upgrade interrupted before it deleted the old key, and may have been
            # written since; the old copy must not overwrite it.
            draft = self._prepare(session)
            draft.record["version"] = getattr(session, "version", None)
            # The keys live deadline - now seconds from the write: with now rounded up,
            # never past the time the old key had left. Without a deadline, rounded
            # down as a save's: a session with no time of its own is stamped with it,
            # which must not come after the next save's.
            now = int(time.time()) if deadline is None else math.ceil(time.time())
            self._write(draft, 0, now, True, expires_by=deadline)
        except ConflictError:
            stored = self._read(data["session_id"])
            if stored is None or not _moved_from(data, stored):
                refused.append(
                    f"{_text(key)!r}: a session {data['session_id']!r} is stored already "
                    "that was not moved from it"
                )
                return
            if _saved_since(data, stored):
                # The original, still running after the move, saved it again, and
                # savegame has not since: its save is the newest, and takes the place
                # of the one moved.
                try:
                    self._write(draft, stored["version"], now, True, expires_by=deadline)
                except ConflictError:
                    refused.append(
                        f"{_text(key)!r}: saved again by the original since it was moved, "
                        f"while savegame saved {data['session_id']!r} too"
                    )
                    return
        except (SerializationError, InvalidIdentifierError) as exc:
            refused.append(f"{_text(key)!r}: {exc}")
            return
        self._call(methodcaller("delete", key))

    def _left_to_move(self, mode: str, keys: list[str]) -> str:
        """What :meth:`upgrade_schema` says of the ``keys`` of ``mode``'s sessions it left
        under this storage's prefix, which keeps this mode."""
        named = ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if keys[5:] else "")
        return (
            f"{named}: {mode} sessions, where the prefix {self.prefix!r} keeps {self.mode} "
            f"ones (a prefix keeps one mode); move them to a prefix of their own with "
            f"RedisStorage(<that prefix>, mode={mode!r}, ...)"
            f".upgrade_schema(original_prefix={self.prefix!r})"
        )

    def _deadline(self, key: Any) -> int | None:
        """When the original's ``key`` expires, in whole unix seconds rounded down, so
        that the session moved never outlives it; None when it has no TTL (or is gone)."""
        left = self._call(methodcaller("pttl", key))
        return None if left < 0 else math.floor(time.time() + left / 1000)

    def _original(self, key: Any, prefix: str) -> dict[str, Any] | None:
        """The session the original stored under ``key`` with ``prefix``; None when ``key``
        holds none."""
        text = self._call(methodcaller("get", key))
        try:
            data = None if text is None else loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
            return None
        if _text(key, "replace") != f"{prefix}:{data['session_id']}":
            return None
        return data

    def _read(self, session_id: str) -> Record | None:
        known = self._known.get(session_id)
        if known is not None and known.whole():
            # One HGET: the session unchanged is returned from what the storage remembers.
            tag = self._tag(session_id)
            token = self._call(methodcaller("hget", f"{tag}h:{session_id}", "token"))
            if token is not None and _text(token, "replace") == known.token:
                return known.record(self.spec.runs_path)
            if token is not None and known.digests:
                # Changed since: the runs after those remembered are fetched, and those
                # remembered are checked by their digests.
                kept = len(known.digests) // _WIDTH
                keys = [f"{tag}{kind}:{session_id}" for kind in "hrd"]
                row = self._script(_READ, keys, [kept])[0]
                digests = self._state(session_id, *row[2:]).digests
                if digests is not None and known.leads(digests):
                    return self._fetched(session_id, row, known)
        return self._read_many([session_id])[0]

    def _forget_written(self, session_ids: Iterable[str]) -> None:
        self._known.forget(session_ids)

    def _read_many(self, ids: Iterable[str], remember: bool = True) -> list[Record | None]:
        """The records of ``ids``, each remembered as it was read when ``remember``."""
        ids = list(ids)
        out: list[Record | None] = [None] * len(ids)
        for i, row in self._per_slot(ids, _READ, "hrd", READ_BATCH):
            out[i] = self._fetched(ids[i], row, remember=remember)
        return out

    def _read_stamps(self, ids: list[str], now: int) -> list[Stamp | None]:
        # The headers alone (see _STAMPS): no key of a run is touched.
        out: list[Stamp | None] = [None] * len(ids)
        for i, (data, *state) in self._per_slot(ids, _STAMPS, "h", BATCH):
            session_id = ids[i]
            self._state(session_id, *state, None)  # its numbers, as a read checks them
            if data is None:
                self._refuse_headless(session_id, state)
                continue
            record, _ = self._decoded(session_id, data, None)
            if not is_expired(record.get("expires_at"), now):
                out[i] = self._stamp_of(record)
        return out

    def _per_slot(
        self, ids: list[str], script: str, kinds: str, size: int
    ) -> Iterator[tuple[int, Any]]:
        """Runs ``script`` on the keys of each kind of ``kinds`` (``"hrd"``: header, runs,
        digests) of ``ids``, a slot at a time, in batches of ``size`` sessions, which keep
        each script short, so one big listing never holds up the server; yields the
        position of each id in ``ids`` with what the script returned for it."""
        slots: dict[str, list[int]] = {}
        tags = self._tags()
        for i, sid in enumerate(ids):
            slots.setdefault(self._tag(sid, tags), []).append(i)
        for tag, positions in slots.items():
            for start in range(0, len(positions), size):
                batch = positions[start : start + size]
                keys = [f"{tag}{kind}:{ids[i]}" for i in batch for kind in kinds]
                yield from zip(batch, self._script(script, keys, []), strict=True)

    def _refuse_headless(self, session_id: str, state: list[Any]) -> None:
        """Raises CorruptSessionError when a session whose header has no data still has
        numbers in it (``state``): its keys were changed outside savegame. A header with
        neither is a session not stored."""
        if any(value is not None for value in state):
            raise CorruptSessionError(
                f"session {session_id!r} under {self._keys} in {self._address} has a "
                "header without its data: its keys were changed outside savegame"
            )

    def _fetched(
        self,
        session_id: str,
        row: list[Any],
        remembered: Known | None = None,
        remember: bool = True,
    ) -> Record | None:
        """The record of what the read script sent, remembered as the session's state when
        ``remember``; ``remembered``: what the storage remembers of the runs the script did
        not send."""
        data, runs, *state = row
        seen = self._state(session_id, *state)
        if data is None:
            self._known.put(session_id, None)
            self._refuse_headless(session_id, state)
            return None
        record, items = self._decoded(session_id, data, runs)
        if items is not None and seen.digests is not None:
            # The script checked the list's length; its entries, joined by commas into one
            # array, must each be one value.
            sent = len(seen.digests) // _WIDTH
            if remembered is not None and remembered.digests:
                # Sent from the first run not remembered: none when the session has since
                # become shorter than what is remembered.
                sent = max(0, sent - len(remembered.digests) // _WIDTH)
            if len(items) != sent:
                self._known.put(session_id, None)
                raise CorruptSessionError(
                    f"session {session_id!r} under {self._keys} in {self._address} has "
                    f"{sent} run entries that read as {len(items)} runs: an entry was changed "
                    "outside savegame to hold other than one JSON value"
                )
        if items is not None and not _holds_runs(record, self.spec.runs_path):
            # The runs were stored apart from the header of a session of another mode (a
            # workflow_v2 session's ``runs`` read in mode "workflow", say): put back where
            # that header holds their place, they make the read raise CorruptSessionError
            # naming the mode, rather than be taken for this mode's runs.
            self._known.put(session_id, None)
            path = next(
                (m.runs_path for m in MODES.values() if _holds_runs(record, m.runs_path)), None
            )
            if path is None:
                raise CorruptSessionError(
                    f"session {session_id!r} under {self._keys} in {self._address} has runs "
                    "stored apart but no place for them in its header"
                )
            set_path(record, path, items)
            return record
        if seen.digests is not None and seen.digests.startswith(_UNKNOWN):
            # Digests of the legacy width: nothing to check runs against, so none is kept.
            self._known.put(session_id, None)
        elif remember:
            pickled = None
            if remembered is not None and items is not None:
                assert seen.digests is not None
                items, pickled = remembered.joined(items, len(seen.digests) // _WIDTH)
            known = Known.read(
                seen.token, seen.header, seen.digests, items, seen.listed, record, pickled
            )
            self._known.put(session_id, known)
        if items is not None:
            set_path(record, self.spec.runs_path, items)
        return record

    def _state(self, session_id: str, *fields: Any) -> Known:
        """:func:`_state_of` the header's fields, naming the session when they are not numbers.

        Raises:
            CorruptSessionError: for a version, time or run count that is not a number.
        """
        try:
            return _state_of(*fields)
        except (ValueError, OverflowError) as exc:
            raise CorruptSessionError(
                f"session {session_id!r} under {self._keys} in {self._address} has a header "
                f"whose numbers cannot be read ({exc}): its keys were changed outside savegame"
            ) from exc

    def _decoded(self, session_id: str, data: Any, runs: Any) -> tuple[Record, Any]:
        """The header's record (null in place of its runs) and the runs (None: not apart)."""
        try:
            record = loads(data)
            if not isinstance(record, dict):
                raise ValueError("the header's data is not a JSON object")
            if record.get("session_id") != session_id:
                raise ValueError(f"the header's data is of session {record.get('session_id')!r}")
            items = None if runs is None else loads(runs)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptSessionError(
                f"session {session_id!r} under {self._keys} in {self._address} is not "
                f"savegame data: {exc}"
            ) from exc
        check_stored(record, self.spec, f"under {self._keys} in {self._address}")
        return record, items

    def _write(
        self,
        draft: Draft,
        expected_version: int | None,
        now: int,
        preserve: bool,
        *,
        expires_by: int | None = None,
    ) -> Record:
        """See :class:`~savegame.storage.base.Storage`; ``expires_by``: the latest the
        session may expire (None: as ``expire`` says), for a session moved with the time it
        had left (:meth:`upgrade_schema`)."""
        try:
            return self._write_on_layout(draft, expected_version, now, preserve, expires_by)
        except _Resharded:
            # On the layout read again: a storage opened without ``shards=`` writes where
            # the store's sessions are now; one opened with another count is refused.
            return self._write_on_layout(draft, expected_version, now, preserve, expires_by)

    def _write_on_layout(
        self,
        draft: Draft,
        expected_version: int | None,
        now: int,
        preserve: bool,
        expires_by: int | None,
    ) -> Record:
        """:meth:`_write` on the layout this storage read.

        Raises:
            _Resharded: when the store was made again over other shards since then.
        """
        sid = draft.session_id
        settled = self._made()
        count = len(self._shard_tags)
        seen, trusted = self._seen_for_write(sid)
        for _ in range(MAX_WRITE_ATTEMPTS):
            try:
                record = self._stamp(draft.record, seen.header, expected_version, now, preserve)
                _expire_by(record, expires_by)
            except ConflictError:
                if trusted:
                    raise
                seen, trusted = self._header(sid), True
                continue
            keys, args, written = self._plan(draft, record, seen, now)
            _check_sizes(sid, args)
            if seen is ABSENT and not trusted and _payload(args) > GUESS:
                seen, trusted = self._header(sid), True
                continue
            result, resent = self._send_write(keys, args)
            if not isinstance(result, list):
                self._known.put(sid, written)
                if result == 2 and not settled:
                    self._record_again(count)
                return draft.whole(record)
            self._known.put(sid, None)
            # The write's token among the session's last writes: an earlier sending made
            # it. Savegame's own (``resent``), or one of a client of the caller's that
            # sends a call again on its own, unseen, and whose retry gets this answer.
            current, past = _text(result[0] or "", "replace"), _text(result[5] or "", "replace")
            made = resent_write_made(written.token, seen.token, current, past)
            if made:
                if current == written.token:
                    self._known.put(sid, written)
                return draft.whole(record)
            if resent and made is None:
                raise outcome_unknown(self._address, sid)
            if trusted:
                # Another writer came between our read and our write: let it finish.
                time.sleep(secrets.randbelow(1000) / 1e6)
            elif seen is ABSENT:
                self._guess_new = False
            seen, trusted = self._state(sid, *result[:5]), True
        raise self._lost(sid, expected_version, seen)

    def _seen_for_write(self, sid: str) -> tuple[Known, bool]:
        """What a write of session ``sid`` writes on, and whether that was read from the
        store just now: the header last seen, or, for a session this storage has not seen,
        none (taken for new while that guess keeps proving right) or the stored one."""
        seen = self._known.get(sid)
        if seen is not None:
            return seen, False
        if self._guess_new:
            return ABSENT, False
        seen = self._header(sid)
        self._guess_new = seen.header is None
        return seen, True

    def _record_again(self, count: int) -> None:
        """Records the layout after a write that made its slot's index: the store may have
        been dropped (by another storage) since this one read the layout, and others must
        find the session where the write put it. ``count``: the shards the write saw."""
        try:
            self._settle(True, count=count)
        except BackendUnavailableError:
            # The write is made: raising would say it was not (a server that filled up
            # since, or went away), and have the caller make it again. A store without the
            # record reads as of this storage's layout; the next call reads it again, and
            # the next write records it.
            with self._lock:
                self._recorded = False

    def _lost(self, sid: str, expected_version: int | None, seen: Known) -> StorageError:
        """The error of a write of ``sid`` whose every attempt lost the race to other
        writers (nothing was written), ``seen`` the last header it read."""
        if expected_version is not None:
            actual = 0 if seen.header is None else seen.header.version
            return ConflictError(sid, expected_version, actual)
        return BackendUnavailableError(
            f"session {sid!r} in {self._address} changed under each of "
            f"{MAX_WRITE_ATTEMPTS} attempts to write it; nothing was written"
        )

    def _send_write(self, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """The write script's answer, and whether it was sent more than once: an earlier
        sending failed after it was sent, and may have been made."""
        sendings = whole = 0

        def send(client: Any) -> Any:
            nonlocal sendings, whole
            _WIRE.sent = False
            refused = False
            try:
                script = _WRITE_CHECKED if self._acl_limited else _WRITE
                return self._scripts[script](keys=keys, args=args, client=client)
            except self._refusals:
                # Answered, and not run: no sending whose outcome is to be found out.
                refused = True
                raise
            finally:
                if not refused:
                    whole += bool(_WIRE.sent)
                    if _WIRE.sent or not self._marks_sent:
                        sendings += 1

        try:
            return self._call(send), sendings > 1
        except BackendUnavailableError as exc:
            if whole and isinstance(exc.__cause__, self._resend_on):
                # Sent, and no answer came to any sending (the server stayed away, or took
                # longer than socket_timeout): the write may have been made, or be made yet
                # (a server that was only slow runs it when it reads it). "Unavailable"
                # says nothing was written, on which a caller would make the change again.
                raise outcome_unknown(
                    self._address, _text(args[1]), f"no answer came to it ({exc.__cause__})"
                ) from exc
            raise

    def _header(self, session_id: str) -> Known:
        tag = self._tag(session_id)
        keys = [f"{tag}h:{session_id}", f"{tag}d:{session_id}"]
        return self._state(session_id, *self._script(_HEADER, keys, []))

    def _plan(
        self, draft: Draft, record: Record, seen: Known, now: int
    ) -> tuple[list[str], list[Any], Known]:
        """The write script's keys and arguments for ``record`` (stamped at ``now``), and
        what it leaves stored."""
        sid = record["session_id"]
        runs = draft.runs
        tag = self._tag(sid)
        index = self._index_keys(tag, record.get("user_id"), record.get(self.spec.entity_field))
        keys = [*self._store_keys(tag), *(f"{tag}{kind}:{sid}" for kind in "hrd"), *index]
        expires = record.get("expires_at")
        token = secrets.token_hex(TOKEN_BYTES)
        # A header without a token (one whose token was removed to say that its session
        # was changed by hand, see the README) may hold a run changed under its old
        # digest: its digests are not taken at their word, and every run is sent.
        stored = seen.digests if seen.token else None
        changes: list[Any] = []
        if runs is not None:
            for position, digest, text in runs.changes(stored):
                changes += [position, digest, text]
        args: list[Any] = [
            tag,
            sid,
            seen.token,
            token,
            -record["created_at"],
            "" if expires is None else expires,
            object_text(record, {k: t for k, t in draft.texts.items() if k not in STAMPED}),
            record["version"],
            record["created_at"],
            "" if runs is None else len(runs),
            "replace" if stored is None else "keep",
            self.spec.entity_field,
            # The keys live from the write as long as the writer's clock gives the session,
            # and no longer than ``expire``: the stamp may be a second later than ``now``,
            # taken when the call began (see Storage._stamp).
            "" if expires is None else max(1, min(expires - now, self.expire or expires - now)),
            self.mode,
            *changes,
        ]
        header = Header(record["version"], record["created_at"], expires)
        return keys, args, Known.written(token, header, runs, (), record)

    def _list(
        self, user_id: str | None, entity_id: str | None, limit: int | None, now: int | None
    ) -> list[str]:
        if limit == 0:
            return []
        args = ["", -1 if limit is None else limit, "" if now is None else now]
        args.append(self.spec.entity_field)
        found: list[tuple[float, str]] = []
        for tag in self._tags():
            keys = self._index_keys(tag, user_id, entity_id)
            index = keys[-1] if keys else tag + "all"
            args[0] = tag
            flat, gone = self._script(_LIST, [*self._store_keys(tag), index], args)
            if gone:
                with contextlib.suppress(BackendUnavailableError):
                    # Cleaning up; a slot being migrated refuses it until it is done.
                    self._forget(tag, gone, now)
            found += [
                (float(flat[i + 1]), self._listed(index, flat[i])) for i in range(0, len(flat), 2)
            ]
        # Each slot answered in order; merged, ties go by id (code points order as UTF-8 does).
        found.sort()
        return [sid for _, sid in found[:limit]]

    def _listed(self, index: str, member: Any) -> str:
        """The session id the index ``index`` lists as ``member``.

        Raises:
            CorruptSessionError: for a member that is not UTF-8, which savegame never writes.
        """
        try:
            return _text(member)
        except UnicodeDecodeError as exc:
            raise CorruptSessionError(
                f"{index} in {self._address} lists {member!r}, which is no session id: it was "
                "changed outside savegame; remove it from there (ZREM)"
            ) from exc

    def _delete(
        self, session_id: str, owner: str | None = None, version: int | None = None
    ) -> bool:
        self._known.put(session_id, None)
        return bool(self._forget(self._tag(session_id), [session_id], None, owner, version))

    def _delete_many(self, session_ids: list[str], removed: list[str], still: Still) -> None:
        owner = still.owner
        if still.versions is not None or owner is None:
            # The script checks one version for all the ids it is given.
            super()._delete_many(session_ids, removed, still)
            return
        slots: dict[str, list[str]] = {}
        tags = self._tags()
        for session_id in session_ids:
            self._known.put(session_id, None)
            slots.setdefault(self._tag(session_id, tags), []).append(session_id)
        for tag, ids in slots.items():
            removed += self._forget(tag, ids, None, owner)

    def _forget(
        self,
        tag: str,
        ids: list[Id],
        now: int | None,
        owner: str | None = None,
        version: int | None = None,
    ) -> list[Id]:
        """Removes ``ids`` (with ``now``: those expired or whose header is gone; with
        ``owner``: those of that user; with ``version``: those at that version) from the slot
        of ``tag``; returns those of ``ids`` there was something to remove for, in their
        order. ``ids`` may be the members of an index as they came (bytes), which need not
        be UTF-8.

        At most :data:`BATCH` ids a script call: Lua unpacks fewer than 8,000 values at once,
        and a listing may meet any number of expired sessions."""
        removed: list[Id] = []
        for start in range(0, len(ids), BATCH):
            chunk: list[Id] = ids[start : start + BATCH]
            keys = self._store_keys(tag) + [_key(tag, kind, sid) for sid in chunk for kind in "hrd"]
            args = [
                "" if now is None else now,
                self.spec.entity_field,
                owner or "",
                "" if version is None else version,
                *chunk,
            ]
            # The script answers with the places (from 1) in ``chunk`` of those it removed.
            script = _FORGET_IDS_CHECKED if self._acl_limited else _FORGET_IDS
            removed += [chunk[int(n) - 1] for n in self._script(script, keys, args)]
        return removed

    def _sweep(self, tag: str, now: int | str) -> int:
        """Removes the sessions of ``tag`` (with ``now``: the expired ones), in batches."""
        total = 0
        while True:
            ids = self._script(_SWEEP, [tag + "all", tag + "exp", tag + "idx"], [BATCH, now])
            if not ids:
                return total
            total += len(self._forget(tag, ids, None if now == "" else int(now)))

    def _purge_expired(self, now: int) -> int:
        return sum(self._sweep(tag, now) for tag in self._tags())

    def store_names(self) -> tuple[object, ...]:
        return (self._address, self.prefix)

    def __repr__(self) -> str:
        return f"RedisStorage(prefix={self.prefix!r}, mode={self.mode!r}, {self._address})"


def _state_of(token: Any, version: Any, created: Any, expires: Any, digests: Any) -> Known:
    """What a write needs of a stored session, from the header's fields the scripts return.

    A header that lacks its token (written before tokens) is written on with the empty
    one, which the write script takes for it; one that lacks its version is at version 1,
    as a read of it says.

    Raises:
        ValueError: for a version or time that is not a number.
    """
    if token is None and version is None:
        return ABSENT
    header = Header(1 if version is None else int(version), _int(created), _int(expires))
    token = "" if token is None else _text(token)
    return Known(token, header, None if digests is None else _text(digests), None)


ABSENT = Known("", None, None, None)
"""What a write assumes of a session the storage has not seen."""


def _holds_runs(record: Record, path: tuple[str, ...]) -> bool:
    """Whether ``record``, a header read from the store, keeps the place of runs stored
    apart at ``path`` (None there, as :func:`~savegame.storage.session.split_runs` left it)."""
    holder = beside_runs(record, path)
    return isinstance(holder, dict) and path[-1] in holder and holder[path[-1]] is None


def _check_sizes(session_id: str, args: list[Any]) -> None:
    """Refuses a write with a value larger than :data:`MAX_ARGUMENT`, before it is sent.

    Raises:
        SerializationError: naming the size and the limit; nothing was written.
    """
    for arg in args:
        # UTF-8 takes at most 4 bytes a character: only long texts are measured.
        if isinstance(arg, str) and 4 * len(arg) > MAX_ARGUMENT:
            size = len(arg.encode("utf-8", "surrogatepass"))
            if size > MAX_ARGUMENT:
                raise SerializationError(
                    f"session {session_id!r}: a run or header of {size} bytes is larger than "
                    f"the {MAX_ARGUMENT} bytes Redis takes in one value (proto-max-bulk-len); "
                    "nothing was written"
                )


def _payload(args: list[Any]) -> int:
    """Characters a script call would send."""
    return sum(len(a) for a in args if isinstance(a, str))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_SIZE).hexdigest()


def _moved_from(old: dict[str, Any], stored: Record) -> bool:
    """Whether ``stored`` is the session an upgrade moved from the original's copy ``old``:
    it has the copy's ``created_at``, which the move keeps; or, for a copy without one
    (nor ``updated_at``, which it would be taken from), which the move stamped with its
    own time, it holds all the copy holds."""
    if old.get("created_at") is not None:
        return bool(stored.get("created_at") == old["created_at"])
    stamps = ("created_at", "updated_at", "version")
    return all(stored.get(k) == v for k, v in old.items() if k not in stamps)


def _saved_since(old: dict[str, Any], stored: Record) -> bool:
    """Whether the original's copy ``old`` of a session was saved after ``stored``, the one
    savegame keeps (moved from it, with its times, and maybe saved since)."""
    saved = old.get("updated_at")
    return type(saved) is int and saved > (stored.get("updated_at") or 0)


def _key(tag: str, kind: str, session_id: str | bytes) -> str | bytes:
    """The key of kind ``kind`` (``h``, ``r``, ``d``) of a session of the slot ``tag``."""
    if isinstance(session_id, bytes):
        return f"{tag}{kind}:".encode() + session_id
    return f"{tag}{kind}:{session_id}"


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    """A stored whole number; a time stored as a float by an earlier savegame, which took
    time.time() as it came, is cut to its whole seconds."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return int(float(value))


def _hostport(host: str, port: Any) -> str:
    """``host:port``, an IPv6 address in brackets ("::1:6379" reads as another address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs and kwargs.get("path"):
        # A unix socket (redis.Redis(unix_socket_path=...)), which has no host or port.
        return f"Redis at unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    if kwargs:
        where = _hostport(str(kwargs.get("host")), kwargs.get("port"))
        return f"Redis at {where}/{kwargs.get('db', 0)}"
    nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None)
    if nodes:
        return "Redis Cluster at " + ",".join(nodes)
    return f"Redis ({type(client).__name__})"


def _expire_by(record: Record, expires_by: int | None) -> None:
    """Makes the stamped ``record`` expire by ``expires_by`` at the latest (None: as
    stamped), for a session moved with the time it had left."""
    if expires_by is not None:
        record["expires_at"] = min(expires_by, record["expires_at"] or expires_by)


def _server(
    url: str | None, host: str, port: int, db: Any, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], int, dict[str, Any], bool]:
    """The nodes, database number and connection options (timeouts defaulted) of a storage
    given ``url``, or ``host``, ``port`` and ``db``, and whether the nodes are a cluster's.

    Raises:
        InvalidIdentifierError: for a URL that is no str or that :func:`_parse_url` refuses,
            a URL given with another server too, a database that is no int of 0 or more, or
            a CA file that is empty or given without TLS.
    """
    nodes = [(host, port)]
    cluster = False
    if url is not None:
        if not isinstance(url, str):
            raise InvalidIdentifierError(
                f"Redis url must be a str (redis://host:6379/0), not {type(url).__name__}"
            )
        if (host, port, db) != ("localhost", 6379, 0):
            # The URL's were used and these dropped without a word.
            raise InvalidIdentifierError(
                "RedisStorage got a url and host, port or db: give the server in the url"
            )
        nodes, db, options = _parse_url(url, options)
        cluster = url.split("://", 1)[0].lower() == "redis+cluster"
    if options["socket_timeout"] is None:
        options["socket_timeout"] = SOCKET_TIMEOUT
    if options["socket_connect_timeout"] is None:
        options["socket_connect_timeout"] = CONNECT_TIMEOUT
    if type(db) is not int or db < 0:
        # Redis refused it only at the first call, as a plain StorageError.
        raise InvalidIdentifierError(
            f"Redis database {db!r} must be a whole number (int), 0 or more"
        )
    if options["ssl_ca_certs"] == "":
        # Taken by redis-py for none: the system's authorities, not the file meant.
        raise InvalidIdentifierError(
            "ssl_ca_certs is empty: name a PEM file, or leave it out for the system's "
            "certificate authorities"
        )
    if options["ssl_ca_certs"] is not None and not options["ssl"]:
        raise InvalidIdentifierError(
            "ssl_ca_certs needs TLS: ssl=True, ?ssl=true or a rediss:// URL"
        )
    return nodes, db, options, cluster


def _parse_url(
    url: str, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], int, dict[str, Any]]:
    """Nodes, database number and connection options of a Redis URL.

    The query may set ``ssl``, ``ssl_ca_certs``, ``socket_timeout`` and ``connect_timeout``;
    any other option is refused rather than ignored (a store's prefix, expiry and shards
    are arguments of the storage).
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in ("redis", "rediss", "redis+cluster"):
        raise InvalidIdentifierError(f"{scheme}:// is not a Redis URL")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    pairs = parse_qsl(query, keep_blank_values=True)
    if "@" in path or any("@" in name for name, _ in pairs):
        # Credentials holding a "/" or "?" end there: the rest of them would be taken for a
        # host, a database or an option, and quoted as such. The URL is not shown.
        raise InvalidIdentifierError(
            "the user name or password of a Redis URL holds a '/' or '?': write them as %2F and %3F"
        )
    options = dict(options)
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        _take_credentials(credentials, options)
    _take_query(scheme, pairs, options)
    nodes = [_node(part) for part in (netloc or "localhost").split(",")]
    if len(nodes) > 1 and scheme != "redis+cluster":
        raise InvalidIdentifierError(f"{scheme}:// names one server; use redis+cluster://")
    return nodes, _database(scheme, netloc, path), options


def _take_credentials(credentials: str, options: dict[str, Any]) -> None:
    """Sets ``options``' user name and password from the ``user:password`` of a URL.

    Raises:
        InvalidIdentifierError: when an argument gave another one (the secret not shown).
    """
    user, has_password, password = credentials.partition(":")
    given = {"username": unquote(user) or None}
    if has_password:
        given["password"] = unquote(password)
    for name, value in given.items():
        if value is not None and options.get(name) not in (None, value):
            # Which one the server expects cannot be told.
            raise InvalidIdentifierError(
                f"RedisStorage got a {name} as an argument and another in its url: give one"
            )
        options[name] = value or options.get(name)


def _take_query(scheme: str, pairs: list[tuple[str, str]], options: dict[str, Any]) -> None:
    """Sets ``options`` from the query of a URL of ``scheme`` (see :func:`_parse_url`).

    Raises:
        InvalidIdentifierError: for an option given twice, an unknown one, or one that an
            argument gave otherwise.
    """
    connection = dict(pairs)
    if scheme == "rediss":
        _check_tls(connection.get("ssl"))
        options["ssl"] = True
    if len(connection) < len(pairs):
        counts = Counter(name for name, _ in pairs)
        twice = sorted(name for name, count in counts.items() if count > 1)
        raise InvalidIdentifierError(
            f"a Redis URL gives an option more than once: {', '.join(twice)}"
        )
    if "ssl" in connection:
        # Taken out first: "ssl=True or ..." left it behind, refused as an unknown option.
        asked = _flag(connection.pop("ssl"))
        if options["ssl"] and not asked:
            # rediss:// with ssl=false is refused above: here ssl=True is the argument's,
            # and TLS was used with the URL's ssl=false dropped.
            raise InvalidIdentifierError(
                "RedisStorage got ssl=True as an argument and ssl=false in its url: give one"
            )
        options["ssl"] = options["ssl"] or asked
    if "ssl_ca_certs" in connection:
        options["ssl_ca_certs"] = _agreed(
            "ssl_ca_certs", options["ssl_ca_certs"], connection.pop("ssl_ca_certs")
        )
    for name, option in (
        ("socket_timeout", "socket_timeout"),
        ("connect_timeout", "socket_connect_timeout"),
    ):
        if name in connection:
            seconds = check_seconds(connection.pop(name), name)
            options[option] = _agreed(name, options[option], seconds)
    if connection:
        raise InvalidIdentifierError(
            f"unknown option(s) for a Redis URL: {', '.join(sorted(connection))}; it takes "
            "ssl, ssl_ca_certs, socket_timeout, connect_timeout (a store's prefix, expire "
            "and shards are arguments of RedisStorage)"
        )


def _agreed(name: str, argument: Any, in_url: Any) -> Any:
    """``in_url``, the URL's value of option ``name``, unless an argument gave another.

    Raises:
        InvalidIdentifierError: naming both values.
    """
    if argument not in (None, in_url):
        raise InvalidIdentifierError(
            f"RedisStorage got {name}={argument!r} as an argument and {in_url!r} in its url: "
            "give one"
        )
    return in_url


def _database(scheme: str, netloc: str, path: str) -> int:
    """The database number of a URL's ``path`` (0 where it names none).

    Raises:
        InvalidIdentifierError: for anything but a number, or a number but 0 in a cluster.
    """
    number = path.strip("/")
    if not number:
        return 0
    db = whole_number(number)
    if db is None:
        socket = ""
        if not netloc and "/" in number:
            # "redis:///run/redis.sock", as redis-py's unix:// URLs name a socket.
            socket = (
                "; a server reached through a unix socket has no URL: give RedisStorage "
                "a ready client, client=redis.Redis(unix_socket_path=...)"
            )
        raise InvalidIdentifierError(f"Redis database {path!r} must be a number{socket}")
    if scheme == "redis+cluster" and db != 0:
        raise InvalidIdentifierError("a Redis Cluster has only database 0")
    return db


def _check_tls(ssl: Any) -> None:
    """Refuses an ``ssl`` option (None: not given) that says no to a ``rediss://`` URL,
    which asks for TLS: one of them was meant, and TLS was used without a word.

    Raises:
        InvalidIdentifierError: for an ``ssl`` that is given and false.
    """
    if ssl is not None and not _flag(ssl):
        raise InvalidIdentifierError(
            f"a rediss:// URL asks for TLS, and ssl={ssl!r} does not: give redis:// for a "
            "connection without TLS, or leave ssl out"
        )


def _flag(value: Any) -> bool:
    """A yes/no URL option; anything but the usual spellings is refused, not read as no:
    an empty one too (``?ssl``, which some read as yes)."""
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidIdentifierError(f"ssl={value!r} is neither true nor false")


def _node(text: str) -> tuple[str, int]:
    refused = InvalidIdentifierError(f"{text!r} is not host:port: ports are from 1 to 65535")
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname or "localhost", parts.port
    except ValueError:
        # A port past 65535 too, which said only "is not host:port".
        raise refused from None
    if port == 0:
        # It was taken for no port, and the storage went to 6379: another server.
        raise refused
    return host, 6379 if port is None else port


def from_url(url: StorageURL) -> RedisStorage:
    """``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS) or a cluster.

    A cluster is named by any of its nodes, comma-separated:
    ``redis+cluster://[:password@]host:port[,host:port...]``, with ``?ssl=true`` for TLS.
    ``?ssl_ca_certs=`` names a PEM file of certificate authorities to trust for TLS.
    ``?prefix=`` names the store (default ``savegame:<mode>``), ``?expire=`` gives seconds,
    ``?shards=`` spreads a new store over that many cluster slots, ``?cache_bytes=`` bounds
    what the storage remembers of its recent sessions, ``?socket_timeout=`` and
    ``?connect_timeout=`` give the seconds a reply and a connection may take.

    Raises:
        InvalidIdentifierError: for a malformed address or database, or an unknown option.
    """
    prefix = url.pop_namespace()
    expire = url.pop_int("expire")
    shards = url.pop_int("shards")
    cache_bytes = url.pop_cache_bytes()
    given = url.options.pop("ssl", None)
    if url.scheme == "rediss":
        _check_tls(given)
    ssl = given is not None and _flag(given)
    ca_certs = url.options.pop("ssl_ca_certs", None)
    socket_timeout = url.options.pop("socket_timeout", None)
    connect_timeout = url.options.pop("connect_timeout", None)
    if url.options:
        raise InvalidIdentifierError(
            f"unknown option(s) for a Redis URL: {', '.join(sorted(url.options))}; it takes "
            "prefix, expire, shards, cache_bytes, ssl, ssl_ca_certs, socket_timeout, "
            "connect_timeout"
        )
    return RedisStorage(
        prefix,
        mode=url.mode,  # type: ignore[arg-type]
        expire=expire,
        ssl=ssl,
        url=url.raw,
        ssl_ca_certs=ca_certs,
        shards=shards,
        cache_bytes=cache_bytes,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
    )
