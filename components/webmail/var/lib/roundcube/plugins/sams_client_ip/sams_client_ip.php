<?php
// Managed by SAMS (components/webmail): tells Dovecot which browser an IMAP login is for.
//
// Roundcube logs in to IMAP from the host itself, so Dovecot would see one address (loopback) for
// every webmail user: one guesser's failures would slow everyone's login (Dovecot's auth penalty)
// and fail2ban could not tell who guessed. This sends the browser's address as IMAP ID
// x-originating-ip before LOGIN. Dovecot believes it only from the address Roundcube binds to
// (imap_conn_options in config.inc.php, login_trusted_networks in dovecot.conf).
// REMOTE_ADDR is nginx's peer: the site blanks X-Forwarded-For and X-Real-IP, so a client cannot
// choose it.
class sams_client_ip extends rcube_plugin
{
    public function init()
    {
        $this->add_hook('storage_connect', [$this, 'storage_connect']);
    }

    public function storage_connect($args)
    {
        if (!empty($_SERVER['REMOTE_ADDR'])) {
            $ident = isset($args['preauth_ident']) && is_array($args['preauth_ident']) ? $args['preauth_ident'] : [];
            $args['preauth_ident'] = array_merge($ident, ['x-originating-ip' => $_SERVER['REMOTE_ADDR']]);
        }
        return $args;
    }
}
