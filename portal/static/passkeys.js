// Passkeys and security keys (WebAuthn). Buttons with data-passkey="register" or
// data-passkey="verify" are hidden until this script shows them, so pages work (with the
// code form) where JavaScript or WebAuthn is unavailable.
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !navigator.credentials) { return; }

  function toBuffer(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return bytes.buffer;
  }

  function toText(buffer) {
    if (!buffer) { return null; }
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function post(url, body) {
    var token = document.querySelector('input[name="csrf_token"]').value;
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json",
                "X-CSRFToken": token},
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) { throw new Error(data.title || "That did not work. Please try again."); }
        return data;
      });
    });
  }

  function register(button) {
    return post(button.dataset.options).then(function (options) {
      options.challenge = toBuffer(options.challenge);
      options.user.id = toBuffer(options.user.id);
      (options.excludeCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
      return navigator.credentials.create({publicKey: options});
    }).then(function (credential) {
      var name = document.getElementById("passkey-name");
      return post(button.dataset.finish, {
        name: name ? name.value : "",
        credential: {
          id: credential.id, rawId: toText(credential.rawId), type: credential.type,
          response: {
            clientDataJSON: toText(credential.response.clientDataJSON),
            attestationObject: toText(credential.response.attestationObject),
            transports: credential.response.getTransports ? credential.response.getTransports() : []
          },
          clientExtensionResults: credential.getClientExtensionResults()
        }
      });
    });
  }

  function verify(button) {
    return post(button.dataset.options).then(function (options) {
      options.challenge = toBuffer(options.challenge);
      (options.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
      return navigator.credentials.get({publicKey: options});
    }).then(function (credential) {
      return post(button.dataset.finish, {
        next: button.dataset.next || "",
        credential: {
          id: credential.id, rawId: toText(credential.rawId), type: credential.type,
          response: {
            clientDataJSON: toText(credential.response.clientDataJSON),
            authenticatorData: toText(credential.response.authenticatorData),
            signature: toText(credential.response.signature),
            userHandle: toText(credential.response.userHandle)
          },
          clientExtensionResults: credential.getClientExtensionResults()
        }
      });
    });
  }

  document.querySelectorAll("[data-passkey]").forEach(function (button) {
    var error = document.getElementById("passkey-error");
    button.hidden = false;
    button.addEventListener("click", function (event) {
      event.preventDefault();
      if (error) { error.hidden = true; }
      button.disabled = true;
      var run = button.dataset.passkey === "register" ? register : verify;
      run(button).then(function (done) {
        window.location.assign(done.redirect);
      }).catch(function (problem) {
        button.disabled = false;
        if (error) {
          error.textContent = problem && problem.name === "NotAllowedError"
            ? "The passkey request was cancelled or timed out." : problem.message;
          error.hidden = false;
        }
      });
    });
  });
})();
