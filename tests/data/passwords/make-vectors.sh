#!/bin/sh
# Rewrites vectors.txt: password hashes made by other implementations, for
# tests/unit/test_auth_passwords.py. Needs /usr/sbin/userdbpw (Debian's
# courier-authlib-userdb), doveadm (dovecot-core), openssl, and a Python with the
# crypt module (<3.13) for $2b$ bcrypt through libxcrypt.
set -e
cd "$(dirname "$0")"
{
echo "# Made on $(date -u +%F) by make-vectors.sh with:"
echo "#   courier-authlib-userdb $(dpkg-query -W -f='${Version}' courier-authlib-userdb): echo PW | /usr/sbin/userdbpw [OPTION]"
echo "#   dovecot-core $(dpkg-query -W -f='${Version}' dovecot-core): doveadm pw -s SCHEME -p PW"
echo "#   $(openssl version | cut -d' ' -f1-2): openssl passwd -1|-5|-6 PW"
echo "#   libxcrypt via python3 crypt.crypt(PW, crypt.mksalt(METHOD_BLOWFISH)): \$2b\$"
echo "# Format: tool<TAB>option<TAB>password<TAB>stored value."
for pw in alice-secret 'pässwörd ü'; do
  for opt in "" -md5 -hmac-md5 -hmac-sha1 -hmac-sha256; do
    printf 'userdbpw\t%s\t%s\t%s\n' "$opt" "$pw" "$(printf '%s\n' "$pw" | /usr/sbin/userdbpw $opt)"
  done
  for s in SHA SSHA SHA256 SSHA256 SHA512 SSHA512 MD5 SMD5 PLAIN-MD5 LDAP-MD5 SHA512-CRYPT \
           SHA256-CRYPT MD5-CRYPT BLF-CRYPT CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256 PLAIN CLEARTEXT; do
    printf 'doveadm\t%s\t%s\t%s\n' "$s" "$pw" "$(doveadm pw -s "$s" -p "$pw")"
  done
  for m in -1 -5 -6; do
    printf 'openssl\t%s\t%s\t%s\n' "$m" "$pw" "$(openssl passwd $m "$pw")"
  done
  printf 'libxcrypt\tbcrypt\t%s\t%s\n' "$pw" "$(python3 -W ignore -c 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' "$pw")"
done
} > vectors.txt
