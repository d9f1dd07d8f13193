-- managed by cmdeploy: changes here are overwritten on the next deploy
--
-- Dovecot's push_notification Lua driver calls this on every LMTP delivery. For each mailbox
-- that received a message from someone else, it sets the private METADATA entry
-- /private/messagenew; chatmail-metadata sees that write and pushes to the user's devices
-- (RFC 5464). A message a user sends to their own address wakes no device.

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
  if not success then
    return
  end
  for name in pairs(ctx.mailboxes) do
    local mailbox = ctx.user:mailbox(name)
    mailbox:sync()
    mailbox:metadata_set("/private/messagenew", "")
    mailbox:free()
  end
end
