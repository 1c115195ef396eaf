// Sign up and sign in. After signing in the user goes back to where the
// session ended (?next=), or to the overview.

import {ApiError, post, session} from "../api.js";
import {fill, h} from "../dom.js";
import {makeForm} from "../forms.js";

function destination(params) {
  const next = params.get("next") || "/";
  // Only a place inside the console: never another origin.
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

async function logIn(ctx, username, password, message) {
  const pair = await post("/api/v1/token/", {username, password});
  session.save(username, pair);
  ctx.navigate(destination(ctx.params), message);
}

function accountScreen({title, submit, fields, onSubmit, question, other, otherLabel}) {
  return {
    title,
    async render(ctx) {
      const form = makeForm({label: title, submit, fields, onSubmit: (values) => onSubmit(ctx, values)});
      const next = ctx.params.get("next");
      fill(ctx.root, h("section", {class: "panel narrow"},
        h("h1", {tabindex: "-1"}, title),
        form.element,
        h("p", {}, question, " ",
          h("a", {href: `#${other}${next ? `?next=${encodeURIComponent(next)}` : ""}`}, otherLabel))));
    },
  };
}

export const signIn = accountScreen({
  title: "Sign in",
  submit: "Sign in",
  fields: [
    {name: "username", label: "Username", autocomplete: "username", required: true},
    {name: "password", label: "Password", type: "password", autocomplete: "current-password", required: true},
  ],
  onSubmit: async (ctx, {username, password}) => {
    try {
      await logIn(ctx, username, password, null);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        throw new ApiError(401, {detail: "Wrong username or password."}, new Headers());
      }
      throw error;
    }
  },
  question: "New here?",
  other: "/signup",
  otherLabel: "Create an account",
});

export const signUp = accountScreen({
  title: "Create an account",
  submit: "Create the account",
  fields: [
    {name: "username", label: "Username", autocomplete: "username", required: true,
      hint: "1 to 150 letters, digits and @ . + - _"},
    {name: "password", label: "Password", type: "password", autocomplete: "new-password", required: true,
      hint: "At least 8 characters."},
  ],
  onSubmit: async (ctx, {username, password}) => {
    await post("/api/v1/auth/", {username, password});
    await logIn(ctx, username, password, `Welcome, ${username}: your account is ready.`);
  },
  question: "Have an account?",
  other: "/signin",
  otherLabel: "Sign in",
});
