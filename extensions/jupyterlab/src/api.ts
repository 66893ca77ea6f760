import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A failed call to the server extension; `message` is its one-line reason. */
export class CasparianApiError extends Error {}

/**
 * Call `/casparian/api/<endpoint>` with the lab's credentials (token, XSRF) and return its
 * JSON. The server extension answers every error with `{"reason": ...}`.
 */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  query: Record<string, string | number | undefined> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const params = Object.entries(query)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  const url =
    URLExt.join(settings.baseUrl, 'casparian', 'api', endpoint) + (params ? `?${params}` : '');
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { reason: text.slice(0, 200) };
  }
  if (!response.ok) {
    throw new CasparianApiError(body?.reason ?? `${response.status} ${response.statusText}`);
  }
  return body as T;
}

/** POST a JSON body. */
export function postAPI<T>(endpoint: string, body: unknown): Promise<T> {
  return requestAPI<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}
