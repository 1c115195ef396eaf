import {h} from "../dom.js";
import {resourceScreen} from "../resource.js";

function secrets(item) {
  return item.has_private_key ? h("span", {class: "ok"}, "key stored") : "password";
}

export const credentials = resourceScreen({
  title: "Credentials",
  noun: "credentials",
  route: "/credentials",
  path: "/api/v1/credentials/",
  intro: "The logins of your machines and clouds: a password, a private key, or both."
    + " Both are stored encrypted and never shown again.",
  filters: () => [
    {name: "username", label: "Username"},
    {name: "domain", label: "Domain"},
  ],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "Username", cell: (item) => item.username},
    {label: "Domain", cell: (item) => item.domain || "—"},
    {label: "Logs in with", cell: secrets},
  ],
  fields: (item) => [
    {name: "username", label: "Username", value: item?.username, required: true},
    {name: "password", label: "Password", type: "password", autocomplete: "new-password",
      hint: item ? "Leave empty to keep the current password." : "Optional when a private key is given."},
    {name: "domain", label: "Domain", value: item?.domain, hint: "Optional."},
    {name: "private_key", label: "Private key", type: "textarea", rows: 6,
      hint: item?.has_private_key
        ? "A key is stored (key stored). Leave empty to keep it; paste another to replace it."
        : "Optional: an OpenSSH or PEM private key, for SSH logins. Never shown again once saved."},
  ],
  body: (values, item) => {
    const body = {...values};
    // Left empty: nothing to change on an edit, and a key login needs no password on create.
    if (!body.password && (item || body.private_key)) delete body.password;
    if (!body.private_key) delete body.private_key;
    return body;
  },
});
