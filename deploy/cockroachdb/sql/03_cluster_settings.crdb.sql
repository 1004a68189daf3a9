-- CockroachDB only. Cluster settings the shop and tarn's change data capture rely on. Run as
-- root, against defaultdb, once the cluster is initialised. Safe to re-run. Cluster settings
-- are stored in the cluster and apply to every node; they survive restarts and upgrades.

-- Changefeeds are built on rangefeeds, which self-hosted clusters leave off by default
-- (CREATE CHANGEFEED fails with "rangefeeds require the kv.rangefeed.enabled setting").
SET CLUSTER SETTING kv.rangefeed.enabled = true;

-- A user holding the CHANGEFEED privilege (tarn_cdc) may only create changefeeds into external
-- connections, which an admin defines (CREATE EXTERNAL CONNECTION) and grants USAGE on. Without
-- this, CHANGEFEED allows a changefeed into any sink URI the user types, i.e. copying the
-- shop's tables anywhere the cluster can reach. Sinkless changefeeds (rows returned on the SQL
-- connection) are unaffected; they need SELECT. Admins are not restricted.
SET CLUSTER SETTING changefeed.permissions.require_external_connection_sink.enabled = true;

-- SQL logins with client certificates only (certs.sh makes one per user; none of the users
-- has a password). CockroachDB always lets root log in with its certificate whatever this
-- says, so this cannot lock the operators out. To allow password logins for a user, add a
-- line such as `host all reporting all cert-password` above the last one.
SET CLUSTER SETTING server.host_based_authentication.configuration = '
# TYPE  DATABASE  USER  ADDRESS  METHOD
host    all       all   all      cert
';
