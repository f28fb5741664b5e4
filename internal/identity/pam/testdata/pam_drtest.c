/* pam_drtest: a PAM module for deskrun's tests only. It stands in for a
 * directory module (pam_sss) in the states this machine cannot reach for
 * real: offline directory, smart-card requirement, cached-credential logon.
 *   rc=N       return PAM code N
 *   msg=TEXT   send TEXT as PAM_TEXT_INFO first ([msg=with spaces])
 *   prompt=PIN ask "PIN for USER: " (echo off); a refused answer returns
 *              PAM_CRED_INSUFFICIENT, as pam_sss does. */
#include <security/pam_modules.h>
#include <security/pam_ext.h>
#include <stdlib.h>
#include <string.h>

static int run(pam_handle_t *pamh, int argc, const char **argv) {
	int rc = PAM_AUTH_ERR, pin = 0;
	const char *msg = NULL, *user = NULL;
	for (int i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "rc=", 3)) rc = atoi(argv[i] + 3);
		else if (!strncmp(argv[i], "msg=", 4)) msg = argv[i] + 4;
		else if (!strcmp(argv[i], "prompt=PIN")) pin = 1;
	}
	if (msg) pam_info(pamh, "%s", msg);
	if (pin) {
		char *resp = NULL;
		pam_get_user(pamh, &user, NULL);
		if (pam_prompt(pamh, PAM_PROMPT_ECHO_OFF, &resp, "PIN for %s: ", user ? user : "") != PAM_SUCCESS || resp == NULL)
			return PAM_CRED_INSUFFICIENT;
		free(resp);
	}
	return rc;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv) { return run(pamh, argc, argv); }
PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv) { return PAM_SUCCESS; }
PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv) { return run(pamh, argc, argv); }
