/** The package's version, sent as `User-Agent: apiauth-js/<version>`; `npm run build` checks it matches package.json. */
export const VERSION = "0.1.0";
