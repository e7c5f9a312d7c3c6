// An AWS Lambda function on Node (CommonJS, Lambda's default), behind API Gateway or a
// function URL. Handler: `index.handler`; environment: APIAUTH_TOKEN (a function token is
// best) and APIAUTH_URL. It calls GitHub through the broker's proxy, which attaches the
// site's token: the function never holds the GitHub token itself.
const { BrokerUnavailable, Unauthorized, proxy } = require("@apiauth/client");

/** @param {{ rawPath?: string, [field: string]: unknown }} event An API Gateway (v2) or function URL event. */
exports.handler = async (event) => {
  const github = proxy("github");
  let answer;
  try {
    answer = await github("/user", { headers: { Accept: "application/vnd.github+json" } });
  } catch (error) {
    if (error instanceof BrokerUnavailable || error instanceof Unauthorized) {
      return respond(503, { message: error.message });
    }
    throw error;
  }
  if (!answer.ok) return respond(answer.status, { message: `GitHub answered ${answer.status}` });
  /** @type {{ login: string, name: string | null }} */
  const user = await answer.json();
  return respond(200, { path: event.rawPath ?? "/", login: user.login, name: user.name });
};

/** @param {number} statusCode @param {unknown} body */
function respond(statusCode, body) {
  return {
    statusCode,
    headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
    body: JSON.stringify(body),
  };
}

if (require.main === module) {
  exports.handler({ version: "2.0", rawPath: "/whoami", headers: {} }).then((answer) => {
    console.log(JSON.stringify(answer));
  });
}
