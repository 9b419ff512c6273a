// The one place that loads @peculiar/x509: it needs the reflect-metadata polyfill loaded before it, and a WebCrypto
// provider set once per process. Every PKI module imports the library through here.

import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto);

export { x509, webcrypto };
