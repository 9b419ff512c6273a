export * from "./identity.js";
export * from "./cert-authority.js";
export * from "./certificate-info.js";
export * from "./cert-store.js";
export * from "./tls-context.js";
export * from "./pki-error.js";
