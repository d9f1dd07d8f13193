/* chatmail_notify: tell a waiting IMAP client of new mail at once, and never lose the news,
   neither in a burst of deliveries nor at the hand-over to hibernation (imap, 1-3 below);
   and tell chatmail-metadata of each delivery that should wake the recipient's devices
   (lmtp, 4). Built on the relay against Debian's dovecot-dev headers
   (cmdeploy/src/cmdeploy/dovecot/plugin.py). doc/performance.md tells the whole story.

   1. Stock Dovecot announces a change to an IDLE client 500 ms after the filesystem reported
      it (NOTIFY_DELAY_MSECS in lib-storage/mailbox-watch.c, a constant). This plugin keeps
      an inotify descriptor of its own on the maildir's new/ while a client waits, and calls
      the client's notify callback as soon as a message is created or moved there. Dovecot's
      own watch and its periodic check (mailbox_idle_check_interval) stay as they are: they
      still run, and remain the fallback.

   2. Syncing right after each arrival meets a race in maildir's quick check: a sync that
      moved files to cur/ records new/'s mtime *after* reading the directory, so a message
      renamed into new/ in between looks already seen, and later syncs skip new/ unless they
      come more than a second later or ask for a full read (maildir-sync.c, "dir_changed" and
      DIR_DELAYED_REFRESH). While a client waits, every sync of the mailbox asks for a full
      read, which rescans new/ whenever its last change is less than a second old; and one
      more sync runs RECHECK_MSECS after the last arrival, for whatever else was in flight.

   3. When an IDLE client goes into hibernation, Dovecot first exports the session, then opens
      a fresh inotify descriptor for imap-hibernate, then closes the mailbox, which drops the
      old descriptor with whatever it had not read yet. A delivery in that gap was never
      announced. This plugin drains its descriptor whenever the mailbox syncs; if, at close,
      it still holds an arrival the client was not told about, it makes a change in new/
      that the fresh descriptor sees: a dot file created and removed at once (maildir readers
      skip dot files).

   Only maildir mailboxes are handled; others are left alone.

   4. In lmtp: for each mailbox that got a message whose From address is not the recipient's
      own, once the delivery's transaction is committed, the private METADATA entry
      /private/messagenew is written (RFC 5464); chatmail-metadata sees that write and pushes
      to the account's devices (doc/contract.md §5.7). An account without the file of device
      tokens in its home has no device to wake: nothing is written for it. Dovecot's Lua
      push driver did this before, at the cost of five headers and a body snippet extracted
      from every delivered message for a script that needs the From address only. */

#include "lib.h"
#include "hostpid.h"
#include "ioloop.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mail-user.h"
#include "mailbox-attribute.h"
#include "master-service.h"
#include "message-address.h"
#include "module-context.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>

#define CHATMAIL_NOTIFY_CONTEXT(obj) \
	MODULE_CONTEXT(obj, chatmail_notify_storage_module)

/* What a delivery does in new/: write the file there, or move it there from tmp/. */
#define ARRIVAL_EVENTS (IN_CREATE | IN_MOVED_TO)
/* Later than maildir's one-second window (MAILDIR_SYNC_SECS) plus the whole second of
   time_t rounding, so that this sync rescans new/ even without a full read. */
#define RECHECK_MSECS 2500

struct chatmail_notify_mailbox {
	union mailbox_module_context module_ctx;
	int inotify_fd;
	struct io *io;
	struct timeout *to_recheck;
};

const char *chatmail_notify_plugin_version = DOVECOT_ABI_VERSION;

void chatmail_notify_plugin_init(struct module *module);
void chatmail_notify_plugin_deinit(void);

static MODULE_CONTEXT_DEFINE_INIT(chatmail_notify_storage_module,
				  &mail_storage_module_register);

/* Read every pending event; whether there was one. */
static bool drain_arrivals(struct chatmail_notify_mailbox *nbox)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool arrived = FALSE;
	ssize_t ret;

	if (nbox->inotify_fd == -1)
		return FALSE;
	while ((ret = read(nbox->inotify_fd, buf, sizeof(buf))) > 0)
		arrived = TRUE;
	return arrived;
}

static void watch_stop(struct chatmail_notify_mailbox *nbox)
{
	timeout_remove(&nbox->to_recheck);
	io_remove(&nbox->io);
	i_close_fd(&nbox->inotify_fd);
}

static void tell_client(struct mailbox *box)
{
	/* last in every caller: the callback may close and free the mailbox */
	if (box->notify_callback != NULL)
		box->notify_callback(box, box->notify_context);
}

static void recheck_timeout(struct mailbox *box)
{
	struct chatmail_notify_mailbox *nbox = CHATMAIL_NOTIFY_CONTEXT(box);

	timeout_remove(&nbox->to_recheck);
	tell_client(box);
}

static void arrival_callback(struct mailbox *box)
{
	struct chatmail_notify_mailbox *nbox = CHATMAIL_NOTIFY_CONTEXT(box);

	(void)drain_arrivals(nbox);
	timeout_remove(&nbox->to_recheck);
	nbox->to_recheck = timeout_add(RECHECK_MSECS, recheck_timeout, box);
	tell_client(box);
}

static void watch_start(struct mailbox *box, struct chatmail_notify_mailbox *nbox)
{
	const char *new_dir = t_strconcat(mailbox_get_path(box), "/new", NULL);

	nbox->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (nbox->inotify_fd == -1) {
		i_error("chatmail_notify: inotify_init1() failed: %m");
		return;
	}
	if (inotify_add_watch(nbox->inotify_fd, new_dir, ARRIVAL_EVENTS) == -1) {
		/* no new/ yet, or no inotify watches left: Dovecot's own checks still run */
		if (errno != ENOENT)
			i_error("chatmail_notify: inotify_add_watch(%s) failed: %m", new_dir);
		i_close_fd(&nbox->inotify_fd);
		return;
	}
	nbox->io = io_add(nbox->inotify_fd, IO_READ, arrival_callback, box);
}

static void chatmail_notify_changes(struct mailbox *box)
{
	struct chatmail_notify_mailbox *nbox = CHATMAIL_NOTIFY_CONTEXT(box);

	nbox->module_ctx.super.notify_changes(box);
	if (box->notify_callback == NULL)
		watch_stop(nbox);
	else if (nbox->inotify_fd == -1)
		watch_start(box, nbox);
}

static struct mailbox_sync_context *
chatmail_sync_init(struct mailbox *box, enum mailbox_sync_flags flags)
{
	struct chatmail_notify_mailbox *nbox = CHATMAIL_NOTIFY_CONTEXT(box);

	if (nbox->inotify_fd == -1)
		return nbox->module_ctx.super.sync_init(box, flags);
	/* this sync sees what arrived so far; only later arrivals are news */
	(void)drain_arrivals(nbox);
	return nbox->module_ctx.super.sync_init(box, flags | MAILBOX_SYNC_FLAG_FULL_READ);
}

/* A change in new/ that a fresh inotify descriptor on it reports, and that nothing reads as
   mail: maildir skips names starting with a dot. */
static void wake_new_watchers(struct mailbox *box)
{
	const char *path = t_strdup_printf("%s/new/.chatmail-wake.%s.%ld",
					   mailbox_get_path(box), my_pid,
					   (long)ioloop_timeval.tv_usec);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	if (fd == -1) {
		i_error("chatmail_notify: open(%s) failed: %m", path);
		return;
	}
	i_close_fd(&fd);
	if (unlink(path) < 0)
		i_error("chatmail_notify: unlink(%s) failed: %m", path);
}

static void chatmail_close(struct mailbox *box)
{
	struct chatmail_notify_mailbox *nbox = CHATMAIL_NOTIFY_CONTEXT(box);

	if (drain_arrivals(nbox))
		wake_new_watchers(box);
	watch_stop(nbox);
	nbox->module_ctx.super.close(box);
}

static void chatmail_notify_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct chatmail_notify_mailbox *nbox;

	if (strcmp(box->storage->name, "maildir") != 0)
		return;
	nbox = p_new(box->pool, struct chatmail_notify_mailbox, 1);
	nbox->module_ctx.super = *v;
	nbox->inotify_fd = -1;
	box->vlast = &nbox->module_ctx.super;
	v->notify_changes = chatmail_notify_changes;
	v->sync_init = chatmail_sync_init;
	v->close = chatmail_close;
	MODULE_CONTEXT_SET(box, chatmail_notify_storage_module, nbox);
}

static struct mail_storage_hooks chatmail_notify_hooks = {
	.mailbox_allocated = chatmail_notify_mailbox_allocated,
};

/* --- 4. lmtp: the push hook ------------------------------------------------------------- */

/* chatmail-metadata keeps an account's device tokens in this file of its home
   (chatmaild.tokens.METADATA_FILE, doc/contract.md §5.7) */
#define TOKENS_FILE "metadata.json"
#define MESSAGENEW_KEY "messagenew" /* /private/messagenew */

#define CHATMAIL_PUSH_CONTEXT(obj) MODULE_CONTEXT(obj, chatmail_push_storage_module)

struct chatmail_push_mailbox {
	union mailbox_module_context module_ctx;
	/* the open transaction saved a message from someone else */
	bool news;
};

static MODULE_CONTEXT_DEFINE_INIT(chatmail_push_storage_module, &mail_storage_module_register);

/* Whether the message's first From address is the user's own (compared as Dovecot's push
   driver did: local part and domain, in any case). No From, or none that parses: not. */
static bool from_self(struct mail *mail, const char *username)
{
	const struct message_address *addr;
	const char *from;

	if (mail_get_first_header(mail, "From", &from) <= 0)
		return FALSE;
	addr = message_address_parse(pool_datastack_create(), (const unsigned char *)from,
				     strlen(from), 1, 0);
	if (addr == NULL || addr->mailbox == NULL || addr->domain == NULL)
		return FALSE;
	return strcasecmp(t_strconcat(addr->mailbox, "@", addr->domain, NULL), username) == 0;
}

static bool may_have_tokens(struct mail_user *user)
{
	const char *home;

	if (mail_user_get_home(user, &home) <= 0)
		return FALSE;
	return access(t_strconcat(home, "/" TOKENS_FILE, NULL), F_OK) == 0;
}

/* The write chatmail-metadata sees. The mailbox is open already: the entry's key needs
   only its GUID, and no sync runs, which would reread new/ on every delivery. */
static void tell_metadata(struct mailbox *box)
{
	struct mail_attribute_value value;
	struct mailbox_transaction_context *t;
	int ret;

	i_zero(&value);
	value.value = "";
	t = mailbox_transaction_begin(box, 0, __func__);
	ret = mailbox_attribute_set(t, MAIL_ATTRIBUTE_TYPE_PRIVATE, MESSAGENEW_KEY, &value);
	if (ret < 0)
		mailbox_transaction_rollback(&t);
	else
		ret = mailbox_transaction_commit(&t);
	if (ret < 0)
		i_error("chatmail_notify: Cannot set attribute /private/" MESSAGENEW_KEY ": %s",
			mailbox_get_last_internal_error(box, NULL));
}

static void note_arrival(struct mailbox *box, struct mail *mail)
{
	struct chatmail_push_mailbox *pbox = CHATMAIL_PUSH_CONTEXT(box);

	if (mail != NULL && !pbox->news) T_BEGIN {
		pbox->news = !from_self(mail, box->storage->user->username);
	} T_END;
}

static int chatmail_push_save_finish(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	struct chatmail_push_mailbox *pbox = CHATMAIL_PUSH_CONTEXT(box);
	struct mail *mail = ctx->dest_mail;

	if (pbox->module_ctx.super.save_finish(ctx) < 0)
		return -1;
	note_arrival(box, mail);
	return 0;
}

/* LMTP saves a message once, for its first recipient, and copies that saved mail into the
   mailboxes of the others (a hard link in maildir), without a save_finish. */
static int chatmail_push_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *box = ctx->transaction->box;
	struct chatmail_push_mailbox *pbox = CHATMAIL_PUSH_CONTEXT(box);

	if (pbox->module_ctx.super.copy(ctx, mail) < 0)
		return -1;
	note_arrival(box, mail);
	return 0;
}

static int
chatmail_push_transaction_commit(struct mailbox_transaction_context *t,
				 struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct chatmail_push_mailbox *pbox = CHATMAIL_PUSH_CONTEXT(box);
	bool news = pbox->news;

	pbox->news = FALSE; /* the write below is a transaction of its own */
	if (pbox->module_ctx.super.transaction_commit(t, changes_r) < 0)
		return -1;
	if (news) T_BEGIN {
		if (may_have_tokens(box->storage->user))
			tell_metadata(box);
	} T_END;
	return 0;
}

static void chatmail_push_transaction_rollback(struct mailbox_transaction_context *t)
{
	struct chatmail_push_mailbox *pbox = CHATMAIL_PUSH_CONTEXT(t->box);

	pbox->news = FALSE;
	pbox->module_ctx.super.transaction_rollback(t);
}

static void chatmail_push_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct chatmail_push_mailbox *pbox;

	pbox = p_new(box->pool, struct chatmail_push_mailbox, 1);
	pbox->module_ctx.super = *v;
	box->vlast = &pbox->module_ctx.super;
	v->save_finish = chatmail_push_save_finish;
	v->copy = chatmail_push_copy;
	v->transaction_commit = chatmail_push_transaction_commit;
	v->transaction_rollback = chatmail_push_transaction_rollback;
	MODULE_CONTEXT_SET(box, chatmail_push_storage_module, pbox);
}

static struct mail_storage_hooks chatmail_push_hooks = {
	.mailbox_allocated = chatmail_push_mailbox_allocated,
};

/* --- the module ---------------------------------------------------------------------------- */

static struct mail_storage_hooks *hooks = NULL;

void chatmail_notify_plugin_init(struct module *module)
{
	/* imap announces new mail (1-3), lmtp tells of it for pushes (4); other processes that
	   load mail plugins (doveadm, ...) get neither */
	const char *name = master_service_get_name(master_service);

	if (strcmp(name, "imap") == 0)
		hooks = &chatmail_notify_hooks;
	else if (strcmp(name, "lmtp") == 0)
		hooks = &chatmail_push_hooks;
	if (hooks != NULL)
		mail_storage_hooks_add(module, hooks);
}

void chatmail_notify_plugin_deinit(void)
{
	if (hooks != NULL)
		mail_storage_hooks_remove(hooks);
	hooks = NULL;
}
