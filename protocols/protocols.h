/* protocols.h: the internal header of protocols/. Sessions see the server only
 * through server/server.h's io_*, session_* and auth_* interfaces. */
#ifndef POSTLING_PROTOCOLS_H
#define POSTLING_PROTOCOLS_H

struct proto_ops;

/* ---------------------------------------------------------------- pop3_session.c */
extern const struct proto_ops pop3_ops;

#endif
