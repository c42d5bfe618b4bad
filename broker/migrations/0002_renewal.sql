-- Sticky renewal: the most minutes one lease of a buy order may reach by
-- renewing with its seller (`cpushare run --renew-up-to`); 0 renews
-- nothing, which is what every order placed before this column meant.
ALTER TABLE orders ADD COLUMN renew_up_to BIGINT NOT NULL DEFAULT 0;
