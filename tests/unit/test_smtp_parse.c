int main(void) { return 1; } /* placeholder until the SMTP parser tests land */
