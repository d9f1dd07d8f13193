-- {{ managed_by }}
--
-- Dovecot 2.4's passdb and userdb (driver lua) for a chatmail relay. Dovecot 2.4 has no dict
-- passdb/userdb any more, so this script asks doveauth what Dovecot 2.3 asked it directly:
-- the same questions, over the same unix socket, in the same dict protocol
-- (chatmaild/src/chatmaild/doveauth.py, dictproto.py). doveauth alone decides whether an
-- account exists, may be created, or is blocked; this script only carries the question and
-- lets Dovecot check the password against the stored {SHA512-CRYPT} hash.
--
-- Dovecot runs it in auth-worker processes (the Lua passdb's default), each answering one
-- request at a time, so the blocking socket of lua-socket holds up no other login.

local unix = require("socket.unix")

local DOVEAUTH_SOCKET = "{{ doveauth_socket }}"
-- doveauth answers within milliseconds, or a few seconds while it creates many accounts
local TIMEOUT_SECS = 30
local PASSDB_PREFIX = "shared/passdb/"
local USERDB_PREFIX = "shared/userdb/"

local connection = nil -- kept open between requests of this worker process

-- Dovecot's str_tabescape, which the dict protocol uses for every field ("\1" .. "0", since
-- Lua would read "\10" as one character, a newline)
local TAB_ESCAPES = { ["\0"] = "\1" .. "0", ["\1"] = "\1" .. "1", ["\t"] = "\1t",
  ["\r"] = "\1r", ["\n"] = "\1n" }
local TAB_UNESCAPES = { ["0"] = "\0", ["1"] = "\1", t = "\t", r = "\r", n = "\n" }

local function tabescape(s)
  return (s:gsub("[%z\1\t\r\n]", TAB_ESCAPES))
end

local function tabunescape(s)
  return (s:gsub("\1(.)", function(c) return TAB_UNESCAPES[c] or c end))
end

-- Dovecot's %E, as the 2.3 configuration escaped the passdb key: a backslash before
-- backslash, " and ', so doveauth splits password and user at the first bare "
local function backslash_escape(s)
  return (s:gsub("[\\\"']", "\\%0"))
end

local function connect()
  local sock = unix()
  sock:settimeout(TIMEOUT_SECS)
  local ok, err = sock:connect(DOVEAUTH_SOCKET)
  if not ok then
    sock:close()
    return nil, err
  end
  return sock
end

local function close()
  if connection ~= nil then
    connection:close()
    connection = nil
  end
end

-- Send one request line; return the first reply line, or nil and why. A connection kept
-- from an earlier request may have been closed by a restarted doveauth: then once more on
-- a new one (a repeated lookup is harmless: doveauth finds the account it just created).
local function exchange(line)
  for _ = 1, 2 do
    local fresh = connection == nil
    if fresh then
      local err
      connection, err = connect()
      if connection == nil then
        return nil, "cannot connect to doveauth: " .. tostring(err)
      end
    end
    local reply, err
    local sent
    sent, err = connection:send(line .. "\n")
    if sent then
      reply, err = connection:receive("*l")
    end
    if reply ~= nil then
      return reply
    end
    close()
    if fresh or err == "timeout" then
      return nil, "doveauth: " .. tostring(err)
    end
  end
  return nil, "doveauth: connection lost"
end

-- A dict lookup: the value, or nil when doveauth found nothing; raises on a failure.
local function lookup(key)
  local reply, err = exchange("L" .. tabescape(key) .. "\t")
  if reply == nil then
    error(err, 0)
  end
  local kind = reply:sub(1, 1)
  if kind == "O" then
    return tabunescape(reply:sub(2))
  elseif kind == "N" then
    return nil
  end
  error("doveauth failed the lookup", 0)
end

-- doveauth's record is a flat JSON object of strings (AuthDict.record): decode just that.
local JSON_ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
  n = "\n", r = "\r", t = "\t" }

local function json_string(text, pos)
  -- text:sub(pos, pos) is the opening quote; returns the string and the position after it
  local parts = {}
  local i = pos + 1
  while true do
    local c = text:sub(i, i)
    if c == "" then
      error("unterminated string in doveauth's record", 0)
    elseif c == '"' then
      return table.concat(parts), i + 1
    elseif c == "\\" then
      local e = text:sub(i + 1, i + 1)
      if e == "u" then
        local code = tonumber(text:sub(i + 2, i + 5), 16)
        i = i + 6
        if code and code >= 0xD800 and code < 0xDC00 and text:sub(i, i + 1) == "\\u" then
          local low = tonumber(text:sub(i + 2, i + 5), 16)
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          i = i + 6
        end
        parts[#parts + 1] = utf8.char(code)
      else
        parts[#parts + 1] = JSON_ESCAPES[e] or error("bad escape in doveauth's record", 0)
        i = i + 2
      end
    else
      local run = text:match('^[^"\\]+', i)
      parts[#parts + 1] = run
      i = i + #run
    end
  end
end

local function decode_record(text)
  local record = {}
  local i = text:find("{", 1, true) or error("doveauth's record is no object", 0)
  i = i + 1
  while true do
    i = text:find("[^%s,]", i) or error("unterminated record from doveauth", 0)
    local c = text:sub(i, i)
    if c == "}" then
      return record
    end
    local key, value
    key, i = json_string(text, i)
    i = text:find('"', i, true) or error("record value is no string", 0)
    value, i = json_string(text, i)
    record[key] = value
  end
end

-- doveauth's record under `key` as a table, or nil when doveauth has none; raises on a
-- failure, with a message that never holds the key (a passdb key holds the password).
local function fetch_record(key)
  local found = lookup(key)
  if found == nil then
    return nil
  end
  return decode_record(found)
end

-- A login with a plaintext password (the relay offers only PLAIN): doveauth returns the
-- account's record, creating the account first when every rule allows it, or nothing.
function auth_password_verify(request, password)
  local key = PASSDB_PREFIX .. backslash_escape(password) .. '"' .. backslash_escape(request.user)
  local ok, record = pcall(fetch_record, key)
  if not ok then
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, record
  elseif record == nil then
    return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "no such account"
  elseif record.password == nil then
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "doveauth's record has no password"
  end
  local matched, err = request:password_verify(record.password, password)
  if matched == 1 then
    return dovecot.auth.PASSDB_RESULT_OK, {}
  elseif matched == 0 then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "password mismatch"
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, tostring(err)
end

-- Lookups without a password (other SASL mechanisms) have nothing to create an account with.
function auth_passdb_lookup(request)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, "only plaintext logins"
end

-- The user's home and ids, for IMAP after the login and for LMTP before each delivery.
function auth_userdb_lookup(request)
  -- escaped as 2.3's `userdb/%Eu` is, so doveauth reads the same key from either release
  local ok, record = pcall(fetch_record, USERDB_PREFIX .. backslash_escape(request.user))
  if not ok then
    return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, record
  elseif record == nil then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "no such account"
  end
  return dovecot.auth.USERDB_RESULT_OK, { home = record.home, uid = record.uid, gid = record.gid }
end

-- Every account, for `doveadm user '*'` and `doveadm -A`.
function auth_userdb_iterate()
  local users = {}
  local reply, err = exchange("I0\t0\t" .. USERDB_PREFIX .. "\t")
  while reply ~= nil and reply ~= "" do
    local key = tabunescape(reply:match("^O([^\t]*)") or "")
    if key:sub(1, #USERDB_PREFIX) == USERDB_PREFIX then
      users[#users + 1] = key:sub(#USERDB_PREFIX + 1)
    end
    reply, err = connection:receive("*l")
  end
  if reply == nil then
    close()
    error(err, 0)
  end
  return users
end
