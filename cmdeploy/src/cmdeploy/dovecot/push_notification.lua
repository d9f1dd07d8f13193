-- managed by cmdeploy: changes here are overwritten on the next deploy
--
-- Dovecot's push_notification Lua driver calls this on every LMTP delivery. For each mailbox
-- that received a message from someone else, it sets the private METADATA entry
-- /private/messagenew; chatmail-metadata sees that write and pushes to the user's devices
-- (RFC 5464). A message a user sends to their own address wakes no device.

-- chatmail-metadata keeps an account's device tokens in this file of its home
-- (doc/contract.md §5.7); without it there is no device to wake.
local TOKENS_FILE = "{{ tokens_file }}"

-- A file test instead of asking chatmail-metadata: the write below costs a dict connection
-- and a mailbox open on every delivery, for nothing to an account that never set a token.
local function may_have_tokens(user)
  local file = io.open(user.home .. "/" .. TOKENS_FILE, "r")
  if file == nil then
    return false
  end
  file:close()
  return true
end

function dovecot_lua_notify_begin_txn(user)
  return { user = user, mailboxes = {} }
end

function dovecot_lua_notify_event_message_new(ctx, event)
  local sender = string.lower(event.from_address or "")
  if sender ~= string.lower(ctx.user.username) then
    ctx.mailboxes[event.mailbox] = true
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
  if not success or next(ctx.mailboxes) == nil or not may_have_tokens(ctx.user) then
    return
  end
  for name in pairs(ctx.mailboxes) do
    local mailbox = ctx.user:mailbox(name)
    -- Opened, not synced: the private entry's key needs only the mailbox GUID, which opening
    -- reads. A sync would reread new/ on every delivery, a cost that grows with the mail no
    -- client has fetched yet (doc/performance.md).
    mailbox:open()
    mailbox:metadata_set("/private/messagenew", "")
    mailbox:free()
  end
end
