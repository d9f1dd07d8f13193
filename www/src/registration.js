// registration.js: shows the part of the home page's "Join" section that fits the relay's
// registration mode now (open, invite, closed). The page was built with chatmail.ini's mode;
// `cmdeploy registration` may have changed it since, and then /registration.json says so
// (doc/accounts.md). Without that file, or without JavaScript, the built mode stays. The page
// loads it before dclogin.js (scripts with defer run in document order): dclogin.js awaits
// `window.chatmailRegistration` and asks /new for a login only in open mode.
"use strict";

window.chatmailRegistration = (async () => {
  const box = document.getElementById("registration");
  if (!box) return;
  try {
    const response = await fetch("/registration.json", { cache: "no-store" });
    if (!response.ok) return;
    const mode = (await response.json()).registration;
    // style.css shows only the part whose data-when is the box's data-mode
    if (box.querySelector(`[data-when="${CSS.escape(String(mode))}"]`)) box.dataset.mode = mode;
  } catch (error) {
    // unreachable or garbled: the mode the page was built with
  }
})();
