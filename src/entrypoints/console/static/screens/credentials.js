import {resourceScreen} from "../resource.js";

export const credentials = resourceScreen({
  title: "Credentials",
  noun: "credentials",
  route: "/credentials",
  path: "/api/v1/credentials/",
  intro: "The logins of your source machines and clouds. A password is stored encrypted and never shown again.",
  filters: () => [
    {name: "username", label: "Username"},
    {name: "domain", label: "Domain"},
  ],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "Username", cell: (item) => item.username},
    {label: "Domain", cell: (item) => item.domain || "—"},
  ],
  fields: (item) => [
    {name: "username", label: "Username", value: item?.username, required: true},
    {name: "password", label: "Password", type: "password", autocomplete: "new-password", required: !item,
      hint: item ? "Leave empty to keep the current password." : null},
    {name: "domain", label: "Domain", value: item?.domain, hint: "Optional."},
  ],
  body: (values, item) => {
    const body = {...values};
    if (item && !body.password) delete body.password;
    return body;
  },
});
