/* main.c: the postling command and its subcommands (design §1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

static const struct subcommand {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
} subcommands[] = {
	{ "serve", cli_serve, "run the mail server (the default)" },
	{ "check-config", cli_check_config, "validate a configuration file" },
	{ "passwd", cli_passwd, "hash a password read from standard input" },
	{ "user", cli_user, "add, delete or list accounts in the users file" },
	{ "deliver", cli_deliver, "deliver a message from standard input to a local mailbox" },
	{ "queue", cli_queue, "list or show the relay queue" },
	{ "dns-records", cli_dns_records, "print the DNS records to publish (MX, SPF, DMARC, DKIM)" },
	{ "dkim-keygen", cli_dkim_keygen, "create a DKIM signing key and print its DNS record" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: postling [SUBCOMMAND] [OPTIONS]\n\nSubcommands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(f, "  %-14s %s\n", subcommands[i].name, subcommands[i].summary);
	fprintf(f, "\nRun 'postling SUBCOMMAND --help' for the options of each.\n");
}

int main(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
		printf("postling 0.1.0\n");
		return 0;
	}
	if (argc < 2 || argv[1][0] == '-')
		return cli_serve(argc, argv);     /* `postling -c FILE` means serve */
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (strcmp(argv[1], subcommands[i].name) == 0)
			return subcommands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "postling: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 64;
}
