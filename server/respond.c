/* The HTTP server's responses, shared by the router (http.c) and the endpoint handlers (api.c,
 * contexts.c): a body or a JSON object with the common headers, an error object in the route's
 * shape (OpenAI or TGI), a Server-Sent Events stream from a content-reader callback; and the
 * helper they need (whether the client has gone). Text that goes into JSON is cleaned to valid
 * UTF-8 with tok_utf8_clean. Each respond call takes ownership of what it is given and queues the
 * response on the request's connection. */
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

/* ---- connection helpers ---- */

bool srv_client_gone(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd p = {ci->connect_fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* ---- responses ---- */

/* CORS only when configured (cors_origin): a browser page of another origin gets no answers. */
static void common_headers(const srv *s, struct MHD_Response *r) {
    if (s->cfg.cors_origin[0]) MHD_add_response_header(r, "Access-Control-Allow-Origin", s->cfg.cors_origin);
    MHD_add_response_header(r, "Server", "kvseek");
}

enum MHD_Result srv_respond(srv_conn *c, int status, const char *content_type, char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    common_headers(c->s, r);
    if (content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == 429 || status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405) {
        /* every route takes one method; / takes two (the web UI and TGI's compat route) */
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
                                c->tgi_root ? "GET, HEAD, POST, OPTIONS" :
                                c->route == SRV_ROUTE_HEALTH || c->route == SRV_ROUTE_METRICS ||
                                c->route == SRV_ROUTE_MODELS ? "GET, HEAD, OPTIONS" :
                                c->route == SRV_ROUTE_CONTEXTS ? (c->ctx_id[0] ? "GET, HEAD, DELETE, OPTIONS"
                                                                               : "GET, HEAD, POST, OPTIONS")
                                                               : "POST, OPTIONS");
    }
    if (atomic_load(&c->s->state) == SRV_DRAINING)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    c->status = status;
    enum MHD_Result rc = MHD_queue_response(c->conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

enum MHD_Result srv_respond_preflight(srv_conn *c) {
    srv *s = c->s;
    struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    common_headers(s, r);
    if (s->cfg.cors_origin[0]) {
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type, X-Kvseek-Context");
        MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
    }
    c->status = 204;
    enum MHD_Result rc = MHD_queue_response(c->conn, 204, r);
    MHD_destroy_response(r);
    return rc;
}

enum MHD_Result srv_respond_json(srv_conn *c, int status, cJSON *obj) {
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!s) return MHD_NO;
    size_t n = strlen(s);
    char *nl = realloc(s, n + 2); /* a trailing newline, for curl users */
    if (nl) {
        s = nl;
        s[n++] = '\n';
        s[n] = 0;
    }
    return srv_respond(c, status, "application/json", s, n);
}

static const char *openai_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 500: return "server_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static const char *default_code(int status) {
    switch (status) {
    case 401: return "invalid_api_key";
    case 404: return "unknown_url";
    case 405: return "method_not_allowed";
    case 413: return "request_too_large";
    case 429: return "rate_limit_exceeded";
    case 503: return "service_unavailable";
    default: return NULL;
    }
}

static const char *tgi_type(int status) {
    switch (status) {
    case 400: case 413: case 422: return "validation";
    case 401: return "authentication";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 429: case 503: return "overloaded";
    default: return "generation";
    }
}

cJSON *srv_error_json(srv_shape shape, int status, const char *code, const char *param, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    char *clean = tok_utf8_clean(msg, strlen(msg));
    if (shape == SRV_SHAPE_TGI) {
        cJSON_AddStringToObject(o, "error", clean ? clean : msg);
        cJSON_AddStringToObject(o, "error_type", tgi_type(status));
    } else {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "message", clean ? clean : msg);
        cJSON_AddStringToObject(e, "type", openai_type(status));
        if (param) cJSON_AddStringToObject(e, "param", param);
        else cJSON_AddNullToObject(e, "param");
        if (!code) code = default_code(status);
        if (code) cJSON_AddStringToObject(e, "code", code);
        else cJSON_AddNullToObject(e, "code");
    }
    free(clean);
    return o;
}

enum MHD_Result srv_respond_error(srv_conn *c, int status, const char *code, const char *param,
                                  const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->shape == SRV_SHAPE_TGI && status == 400) status = 422;
    return srv_respond_json(c, status, srv_error_json(c->shape, status, code, param, msg));
}

enum MHD_Result srv_respond_stream(srv_conn *c, MHD_ContentReaderCallback cb, void *cls,
                                   MHD_ContentReaderFreeCallback fcb) {
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, cb, cls, fcb);
    if (!r) {
        fcb(cls);
        return MHD_NO;
    }
    common_headers(c->s, r);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    c->status = 200;
    enum MHD_Result rc = MHD_queue_response(c->conn, 200, r);
    MHD_destroy_response(r);
    return rc;
}
